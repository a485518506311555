"""Every global-only extractor (``EXTRACTORS.names(kind="global")``) through the same checks.

A global-only part gives one ``[G]`` unit descriptor per image and no local features; a mildly
warped copy of a real photo must retrieve its original first among 6 other photos (skimage.data),
and batched extraction must equal one image at a time. ``netvlad`` runs on a pytorch-NetVlad
checkpoint with random weights written by the test (conftest ``write_netvlad_checkpoint``): measured
with the mild warp below, every one of the 7 queries ranks its original first, the closest margin
0.9905 vs 0.9893 (chelsea); ``hfnet-global`` (the shipped student) 0.9930 vs 0.9748 at worst (rocket).
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch

from visloc.data.homography import fit_image
from visloc.features import EXTRACTORS
from visloc.features.api import extract_batch, extract_image, image_to_tensor, resize_for
from visloc.weights.load import WeightsError

NAMES = EXTRACTORS.names(kind="global")
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry", "coins")
#: a mild warp: about 5 degrees of rotation and shear, 12 px shift, a little perspective
H_MILD = np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [1e-5, -2e-5, 1.0]])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """The 7 skimage photos, covered and centre-cropped to 320 x 240, float32 RGB."""
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
        out.append(fit_image(img.astype(np.float32) / 255.0, (320, 240)))
    return out


def test_the_shipped_global_extractors_are_listed():
    assert {"hfnet-global", "netvlad"} <= set(NAMES)
    assert all(EXTRACTORS.capabilities(n).outputs == {"global"} for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unit_global_descriptor_and_no_local_features(name, ready_extractor, astronaut_320):
    ex = ready_extractor(name)
    (f,) = ex(image_to_tensor(astronaut_320))
    assert not f.has_local and f.num_keypoints == 0 and f.descriptor_dim == 0 and ex.descriptor_dim == 0
    assert f.image_size == (320, 240)
    g = f.global_descriptor
    assert g is not None and g.shape == (ex.global_dim,) and g.dtype == torch.float32
    assert torch.isfinite(g).all() and abs(float(g.norm()) - 1) < 1e-5
    arrays = f.numpy()  # what the feature store writes: a global descriptor, no keypoints
    assert set(arrays) == {"image_size", "global_descriptor"}


@pytest.mark.parametrize("name", NAMES)
def test_warped_copy_retrieves_its_original_first(name, ready_extractor, photos):
    ex = ready_extractor(name)
    db = np.stack([extract_image(ex, im).global_descriptor.numpy() for im in photos])
    for i, im in enumerate(photos):
        q = extract_image(ex, cv2.warpPerspective(im, H_MILD, (320, 240), flags=cv2.INTER_LINEAR))
        sim = db @ q.global_descriptor.numpy()
        assert int(np.argmax(sim)) == i, f"{name}: the warped {PHOTOS[i]} retrieved {PHOTOS[int(np.argmax(sim))]}"


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_single(name, ready_extractor, photos):
    ex = ready_extractor(name)
    some = photos[:3]
    batched = extract_batch(ex, [resize_for(ex, im) for im in some])
    assert len(batched) == len(some)
    for f, im in zip(batched, some, strict=True):
        single = extract_image(ex, im)
        torch.testing.assert_close(f.global_descriptor, single.global_descriptor, atol=1e-5, rtol=0)
        assert f.image_size == single.image_size == (320, 240)
    g = torch.stack([f.global_descriptor for f in batched])
    assert (g @ g.T - torch.eye(len(g))).max() < 0.9999  # different descriptors, not one repeated


# --- hfnet-global ----------------------------------------------------------------------------------


def test_hfnet_global_equals_hfnet_global_descriptor(ready_extractor, build_extractor, astronaut_320):
    glob, full = ready_extractor("hfnet-global"), ready_extractor("hfnet")
    for crop in (astronaut_320, astronaut_320[:237, :301]):  # 301 x 237: padded to 304 x 240 by both
        a, b = extract_image(glob, crop), extract_image(full, crop)
        torch.testing.assert_close(a.global_descriptor, b.global_descriptor, atol=1e-5, rtol=0)


def test_hfnet_global_without_default_weights_raises(monkeypatch, tmp_path):
    from visloc.weights import hfnet as hfnet_weights

    monkeypatch.setattr(hfnet_weights, "DEFAULT_WEIGHTS", tmp_path / "none.pt")
    with pytest.raises(WeightsError, match=r"weights=CHECKPOINT"):
        EXTRACTORS.build("hfnet-global")
    assert EXTRACTORS.build("hfnet-global", ["allow_random=true"]).global_dim == 4096


# --- netvlad ---------------------------------------------------------------------------------------


def test_netvlad_needs_weights():
    assert EXTRACTORS.capabilities("netvlad").needs == {"weights"}
    with pytest.raises(WeightsError, match=r"netvlad: weights is required"):
        EXTRACTORS.build("netvlad")


def test_netvlad_equals_the_loaded_network(ready_extractor, netvlad_checkpoint, astronaut_320):
    from visloc.weights.converters.netvlad import load_pytorch_netvlad

    ex = ready_extractor("netvlad")
    caps = EXTRACTORS.capabilities("netvlad", ex.conf)
    assert caps.weights == (str(netvlad_checkpoint),) and not caps.needs
    net = load_pytorch_netvlad(netvlad_checkpoint)
    x = image_to_tensor(astronaut_320)
    with torch.no_grad():
        expected = net(x)[0]  # the loader's ImageNet mean / std, applied inside the network
    torch.testing.assert_close(ex(x)[0].global_descriptor, expected, atol=1e-5, rtol=0)
    assert ex.global_dim == 256
    gray = astronaut_320 @ np.array([0.299, 0.587, 0.114], np.float32)
    assert float(ex(image_to_tensor(gray))[0].global_descriptor @ expected) < 0.9999  # gray is expanded, not RGB


@pytest.mark.parametrize(("filename", "fmt", "message"), [("junk.mat", "auto", "cannot read as a .mat file"),
                                                          ("junk.pth.tar", "auto", "cannot load"),
                                                          ("junk.pth.tar", "matconvnet", "cannot read as a .mat")])
def test_netvlad_format_picks_the_loader(filename, fmt, message, tmp_path):
    path = tmp_path / filename
    path.write_bytes(b"not a weights file" * 20)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        EXTRACTORS.build("netvlad", [f"weights={path}", f"format={fmt}"])
