"""Every registered image matcher through the same checks, and through the ``match_dense`` pipeline.

Parametrized over ``MATCHERS.names(kind="image")`` (today ``detector-pair``): keypoints inside both
images, the ``Matches`` invariants, a real photo warped by a known homography matched correctly,
and ``pipelines.match_dense`` writing hloc-layout files that resume. For ``detector-pair`` the
merged per-image keypoints must reproduce the extractor + matcher's own matches.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from visloc.features.api import image_to_tensor
from visloc.geometry.transforms import warp_points
from visloc.io import features_h5, matches_h5
from visloc.matching import MATCHERS
from visloc.matching.api import match_images
from visloc.pipelines.match_dense import QuantizeConf, match_dense, raw_path
from visloc.types import Matches

#: image matchers that need weights only a user has (LoFTR's checkpoints): tested in their own files
USER_WEIGHTS = {"loftr"}

def _has_shipped(key: str) -> bool:
    from visloc.weights.records import WEIGHTS, shipped_path

    return key in WEIGHTS and shipped_path(key).is_file()


#: matchers whose default is a shipped trained network (they are tested with it, never with random weights)
SHIPPED = {"loftr-coarse": "loftr-coarse-s", "loftr-coarse-onnx": "loftr-coarse-s"}
NAMES = [n for n in MATCHERS.names(kind="image")
         if n not in USER_WEIGHTS and (n not in SHIPPED or _has_shipped(SHIPPED[n]))]
#: largest distance (px) of a correct match: a coarse matcher puts its keypoints at cell centres, so a match of
#: the right cell may be half a cell's diagonal away (16 px cells: 11.3 px)
PX_TOL = {"loftr-coarse": 12.0, "loftr-coarse-onnx": 12.0}
#: a mild perspective warp of the coffee photo (pixel-centre-at-0, image 0 -> image 1)
H_0TO1 = np.array([[0.93, 0.10, 14.0], [-0.07, 0.96, 10.0], [2e-5, -3e-5, 1.0]])


@pytest.fixture(scope="module")
def coffee_pair():
    """skimage's coffee at 320 x 240 and its copy warped by ``H_0TO1``, float32 RGB."""
    import skimage.data

    img = cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return img, cv2.warpPerspective(img, H_0TO1, (320, 240), flags=cv2.INTER_LINEAR)


def check_image_matches(out: Matches, size0: tuple[int, int], size1: tuple[int, int]) -> None:
    """``Matches`` of an image matcher: its own keypoints inside both images, indices and scores valid."""
    assert isinstance(out, Matches) and out.dense
    k0, k1 = out.keypoints0, out.keypoints1
    assert k0 is not None and k1 is not None
    assert k0.shape == (out.num0, 2) and k1.shape == (out.num1, 2)
    for kp, (w, h) in ((k0, size0), (k1, size1)):
        assert kp.dtype == torch.float32 and torch.isfinite(kp).all()
        assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= w - 0.5).all()
        assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= h - 0.5).all()
    m, s = out.matches, out.scores
    assert m.dtype == torch.int64 and m.shape == (out.num_matches, 2)
    assert s.dtype == torch.float32 and ((s >= 0) & (s <= 1)).all()
    assert len(torch.unique(m[:, 0])) == len(m) and len(torch.unique(m[:, 1])) == len(m)  # one-to-one
    assert torch.equal(out.matches0()[m[:, 0]], m[:, 1])


def _homography_inliers(out: Matches, tol: float) -> np.ndarray:
    m = out.matches.numpy()
    p0 = out.keypoints0.numpy()[m[:, 0]].astype(np.float64)
    p1 = out.keypoints1.numpy()[m[:, 1]].astype(np.float64)
    return np.linalg.norm(warp_points(p0, H_0TO1) - p1, axis=1) < tol


@pytest.mark.parametrize("name", NAMES)
def test_forward_contract_and_known_homography(name, build_matcher, coffee_pair):
    matcher = build_matcher(name)
    img0, img1 = coffee_pair
    out = matcher(image_to_tensor(img0), image_to_tensor(img1))
    assert isinstance(out, list) and len(out) == 1
    check_image_matches(out[0], (320, 240), (320, 240))
    assert out[0].num_matches > 50
    assert np.mean(_homography_inliers(out[0], PX_TOL.get(name, 3.0))) > 0.8


@pytest.mark.parametrize("name", NAMES)
def test_match_images_maps_keypoints_back(name, build_matcher, coffee_pair):
    matcher = build_matcher(name)
    img0, img1 = coffee_pair
    big1 = np.repeat(np.repeat(img1, 2, axis=0), 2, axis=1)  # 640 x 480; area-resized by 1/2 gives img1 back
    out = match_images(matcher, img0, big1, resize_max=320)
    check_image_matches(out, (320, 240), (640, 480))
    assert out.num_matches > 50
    m = out.matches.numpy()
    p1 = (out.keypoints1.numpy()[m[:, 1]] + 0.5) / 2.0 - 0.5  # back in img1's pixels
    err = np.linalg.norm(warp_points(out.keypoints0.numpy()[m[:, 0]].astype(np.float64), H_0TO1) - p1, axis=1)
    assert np.mean(err < PX_TOL.get(name, 3.0)) > 0.8


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_pairs(name, build_matcher, coffee_pair, astronaut_320):
    matcher = build_matcher(name)
    img0, img1 = coffee_pair
    x0 = torch.cat([image_to_tensor(img0), image_to_tensor(astronaut_320)])
    x1 = torch.cat([image_to_tensor(img1), image_to_tensor(astronaut_320[:, ::-1].copy())])
    if matcher.max_batch is not None and matcher.max_batch < 2:
        with pytest.raises(ValueError, match=r"B=2"):
            matcher(x0, x1)
        return
    batched = matcher(x0, x1)
    assert len(batched) == 2
    for b in range(2):
        (single,) = matcher(x0[b:b + 1], x1[b:b + 1])
        check_image_matches(batched[b], (320, 240), (320, 240))
        assert torch.equal(batched[b].matches, single.matches)
        torch.testing.assert_close(batched[b].keypoints0, single.keypoints0, atol=1e-3, rtol=0)
        torch.testing.assert_close(batched[b].keypoints1, single.keypoints1, atol=1e-3, rtol=0)
    assert not torch.equal(batched[0].keypoints0, batched[1].keypoints0)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_name_the_argument(name, build_matcher):
    matcher = build_matcher(name)
    with pytest.raises(ValueError, match=r"image1: expected \[B, 1 or 3, H, W\]"):
        matcher(torch.rand(1, 3, 64, 64), torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"image0: expected"):
        matcher(torch.rand(1, 2, 64, 64), torch.rand(1, 3, 64, 64))
    with pytest.raises(TypeError, match=r"expected an ImageMatcher"):
        match_images(build_matcher("nn-mutual"), np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))


# --- the dense pipeline ----------------------------------------------------------------------------

IMAGES = ("coffee.png", "coffee_warped.png", "sub/astronaut.png")
PAIRS = (("coffee.png", "coffee_warped.png"), ("coffee.png", "sub/astronaut.png"),
         ("coffee_warped.png", "sub/astronaut.png"))


@pytest.fixture(scope="module")
def dense_folder(coffee_pair, astronaut_320, tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 3 images (one in ``sub/``) and a pairs file of its 3 pairs."""
    root = tmp_path_factory.mktemp("dense")
    (root / "images" / "sub").mkdir(parents=True)
    for name, img in zip(IMAGES, (*coffee_pair, astronaut_320), strict=True):
        bgr = cv2.cvtColor((img * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(root / "images" / name), bgr)
    pairs = root / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for a, b in PAIRS))
    return root / "images", pairs


@pytest.fixture(scope="module")
def dense_run(dense_folder, tmp_path_factory):
    """``match_dense`` of every image matcher on ``dense_folder``: name -> (features, matches, summary)."""
    images, pairs = dense_folder
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        summary = match_dense(pairs, images, root / "feats.h5", root / "matches.h5", matcher=name, device="cpu",
                              progress=False)
        out[name] = (root / "feats.h5", root / "matches.h5", summary)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_match_dense_writes_hloc_layout(name, dense_run, dense_folder):
    feats, matches, summary = dense_run[name]
    assert summary.done == 3 and summary.already_done == 0 and not summary.failed
    sizes = {}
    with h5py.File(feats, "r") as fd:
        for image in IMAGES:
            grp = fd[image]  # hloc: one group per image name, '/' in names as nested groups
            kp, sc = grp["keypoints"][()], grp["scores"][()]
            assert kp.ndim == 2 and kp.shape[1] == 2 and sc.shape == (len(kp),) and len(kp) > 0
            w, h = (int(v) for v in grp["image_size"][()])
            assert (w, h) == (320, 240)
            assert (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()
            sizes[image] = len(kp)
    with h5py.File(matches, "r") as fd:
        for a, b in PAIRS:
            grp = fd[matches_h5.names_to_pair(a, b)]
            m0, s0 = grp["matches0"][()], grp["matching_scores0"][()]
            assert m0.dtype == np.int32 and m0.shape == (sizes[a],) and s0.shape == (sizes[a],)
            assert ((m0 >= -1) & (m0 < sizes[b])).all()
            assert len(np.unique(m0[m0 >= 0])) == int((m0 >= 0).sum())  # one-to-one
            assert ((s0[m0 >= 0] > 0) & (s0[m0 >= 0] <= 1)).all() and (s0[m0 < 0] == 0).all()
    # read back through visloc's readers: Features and the matched keypoints fit the homography
    f0, f1 = features_h5.load_features(feats, "coffee.png"), features_h5.load_features(feats, "coffee_warped.png")
    assert f0.num_keypoints == sizes["coffee.png"] and not f0.has_local
    m, _ = matches_h5.read_matches(matches, "coffee.png", "coffee_warped.png")
    assert len(m) > 50
    err = np.linalg.norm(warp_points(f0.keypoints.numpy()[m[:, 0]].astype(np.float64), H_0TO1)
                         - f1.keypoints.numpy()[m[:, 1]], axis=1)
    assert np.mean(err < PX_TOL.get(name, 3.0)) > 0.8
    m_other, _ = matches_h5.read_matches(matches, "coffee.png", "sub/astronaut.png")
    assert len(m_other) < len(m) / 3  # different photos match far less


@pytest.mark.parametrize("name", NAMES)
def test_match_dense_resumes_without_matching(name, dense_run, dense_folder, monkeypatch):
    images, pairs = dense_folder
    feats, matches, _ = dense_run[name]
    before = {p: matches_h5.read_matches(matches, *p) for p in PAIRS}

    def no_build(*args, **kwargs):
        raise AssertionError("a resumed run built the matcher")

    monkeypatch.setattr(MATCHERS, "build_conf", no_build)
    summary = match_dense(pairs, images, feats, matches, matcher=name, device="cpu", progress=False)
    assert summary.done == 0 and summary.already_done == 3
    for p in PAIRS:  # the merge is deterministic: the same files again
        np.testing.assert_array_equal(matches_h5.read_matches(matches, *p)[0], before[p][0])
    assert raw_path(matches).is_file()


def test_detector_pair_merged_keypoints_reproduce_its_matches(dense_run, dense_folder, build_matcher):
    feats, matches, _ = dense_run["detector-pair"]
    images, _ = dense_folder
    matcher = build_matcher("detector-pair")
    cell = QuantizeConf().cell_size
    from visloc.io.images import read_image

    for a, b in PAIRS:
        ref = match_images(matcher, read_image(images / a), read_image(images / b))
        rm = ref.matches.numpy()
        r0, r1 = ref.keypoints0.numpy()[rm[:, 0]], ref.keypoints1.numpy()[rm[:, 1]]
        m, _ = matches_h5.read_matches(matches, a, b)
        k0 = features_h5.load_features(feats, a).keypoints.numpy()[m[:, 0]]
        k1 = features_h5.load_features(feats, b).keypoints.numpy()[m[:, 1]]
        # each merged match lies in the cells of one of the extractor's matches: both ends within a cell
        d = np.maximum(np.linalg.norm(k0[:, None] - r0[None], axis=-1), np.linalg.norm(k1[:, None] - r1[None], axis=-1))
        nearest = d.min(1) if len(rm) else np.zeros(0)
        assert (nearest <= cell * np.sqrt(2) + 1e-4).all(), f"{a} {b}: a merged match off every original one"
        if len(rm) > 50:  # few original matches are lost to cells shared with another image's matches
            assert len(m) >= 0.9 * len(rm) and np.median(nearest) < 0.5
