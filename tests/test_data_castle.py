"""ViSP Castle-simu (visloc.data.castle): decoders, pose/depth conventions, match error.

Thresholds come from measurements over all pairs (see the module docstring): the median depth error
of ``reprojection_check`` is at most 0.21 mm (step 1) / 0.16 mm (step 5) with the right conventions
and at least 5.4 mm with inverted poses (step 5); 1 mm separates the two with a 5x margin on the good side.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from visloc.data.castle import (
    CASTLE_ROOT,
    CastleFrame,
    castle_pairs,
    depth_match_error,
    load_castle,
    load_intrinsics,
    read_depth,
    read_pose,
    registered_depth,
    relative_pose,
    reprojection_check,
)
from visloc.data.errors import DatasetError

needs_castle = pytest.mark.skipif(
    not CASTLE_ROOT.is_dir(), reason=f"{CASTLE_ROOT} missing: install Debian package visp-images-data")


@pytest.fixture(scope="module")
def frames() -> list[CastleFrame]:
    if not CASTLE_ROOT.is_dir():
        pytest.skip(f"{CASTLE_ROOT} missing: install Debian package visp-images-data")
    return load_castle()


def test_missing_root_names_the_package(tmp_path):
    with pytest.raises(DatasetError, match="install Debian package visp-images-data"):
        load_castle(tmp_path / "nowhere")


def test_intrinsics_are_read_from_xml(tmp_path):
    xml = tmp_path / "cam.xml"
    xml.write_text("<conf><camera><px>512.5</px><py>510</py><u0>300.25</u0><v0>200</v0></camera></conf>")
    np.testing.assert_array_equal(load_intrinsics(xml), [[512.5, 0, 300.25], [0, 510, 200], [0, 0, 1]])
    (tmp_path / "bad.xml").write_text("<conf><camera><px>1</px></camera></conf>")
    with pytest.raises(DatasetError, match="bad.xml"):
        load_intrinsics(tmp_path / "bad.xml")


@needs_castle
def test_load_castle(frames):
    assert len(frames) == 40
    assert frames[0].name == "Images/Image_0001.pgm" and frames[-1].name == "Images/Image_0040.pgm"
    assert frames[6].depth_path.name == "Depth_0007.bin"
    K = load_intrinsics(CASTLE_ROOT / "Config" / "chateau.xml")
    np.testing.assert_array_equal(K, [[700, 0, 320], [0, 700, 240], [0, 0, 1]])
    for f in frames:
        np.testing.assert_array_equal(f.K, K)
        np.testing.assert_array_equal(f.K_depth, K)  # chateau_depth.xml has the same values
    assert castle_pairs(frames, 5)[0] == (0, 5) and castle_pairs(frames, 5)[-1] == (34, 39)
    assert len(castle_pairs(frames, 1)) == 39
    with pytest.raises(ValueError, match="step"):
        castle_pairs(frames, 0)


@needs_castle
def test_read_depth_and_pose(frames):
    d = read_depth(frames[0].depth_path)
    assert d.shape == (480, 640) and d.dtype == np.float32
    assert cv2.imread(str(frames[0].image_path), cv2.IMREAD_GRAYSCALE).shape == d.shape
    valid = d[d > 0]
    assert 0.7 < (d == 0).mean() < 0.9  # background
    assert 0.45 < valid.min() and valid.max() < 0.8  # metres; all frames: 0.25 .. 0.75
    R, t = read_pose(frames[0].image_path.parents[1] / "CameraPose" / "Camera_001.txt")
    assert R.dtype == np.float64 and R.shape == (3, 3) and t.shape == (3,)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(t, [0.05000004917383194, 0.10589860379695892, 0.6010702848434448])


@needs_castle
def test_corrupt_files_raise(frames, tmp_path):
    truncated = tmp_path / "Depth_0001.bin"
    truncated.write_bytes(frames[0].depth_path.read_bytes()[:100_000])
    with pytest.raises(DatasetError, match="Depth_0001.bin") as info:
        read_depth(truncated)
    assert "\n" not in str(info.value)
    (tmp_path / "short.bin").write_bytes(b"\x01\x02")
    with pytest.raises(DatasetError, match="short.bin"):
        read_depth(tmp_path / "short.bin")
    (tmp_path / "pose.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(DatasetError, match="pose.txt"):
        read_pose(tmp_path / "pose.txt")


@needs_castle
@pytest.mark.parametrize("step, min_fraction, max_photo", [(1, 0.97, 6 / 255), (5, 0.93, 9 / 255)])
def test_poses_and_depth_are_consistent(frames, step, min_fraction, max_photo):
    # Measured minimum consistent fraction 0.983 / 0.943, max photometric error 4.3 / 6.6 (of 255).
    for i, j in castle_pairs(frames, step):
        r = reprojection_check(frames[i], frames[j], stride=8)
        assert r["num_points"] > 500
        assert r["median_depth_error"] < 1e-3, (i, j, r)
        assert r["consistent_fraction"] > min_fraction, (i, j, r)
        assert r["photometric_error"] < max_photo, (i, j, r)


@needs_castle
def test_wrong_conventions_are_detected(frames):
    def inverted(f: CastleFrame) -> CastleFrame:
        return dataclasses.replace(f, R=f.R.T, t=-f.R.T @ f.t)

    def next_pose(k: int) -> CastleFrame:
        return dataclasses.replace(frames[k], R=frames[k + 1].R, t=frames[k + 1].t)

    # Measured on (20, 25): 20.5 mm with inverted poses, 4.2 mm with poses one frame late.
    assert reprojection_check(inverted(frames[20]), inverted(frames[25]))["median_depth_error"] > 5e-3
    assert reprojection_check(next_pose(20), next_pose(25))["median_depth_error"] > 2e-3


@needs_castle
@pytest.mark.parametrize("k", [0, 20, 39])
def test_registered_depth_covers_the_object_in_the_image(frames, k):
    # The background renders as exactly 64. Measured share of registered depth pixels on the object:
    # >= 0.9996 (share of object pixels with depth 0.95 / 0.79 / 0.71: disocclusions and the part of
    # the scene outside the depth camera's view); the raw, unregistered map: 0.58 / 0.61 / 0.63.
    d = registered_depth(frames[k])
    assert d.shape == (480, 640) and d.dtype == np.float32
    fg = cv2.imread(str(frames[k].image_path), cv2.IMREAD_GRAYSCALE) != 64
    assert (fg & (d > 0)).sum() / (d > 0).sum() > 0.999
    assert (fg & (d > 0)).sum() / fg.sum() > 0.65
    raw = read_depth(frames[k].depth_path) > 0
    assert (fg & raw).sum() / raw.sum() < 0.7


@needs_castle
def test_depth_match_error_exact(frames):
    f0, f1 = frames[10], frames[15]
    depth0 = registered_depth(f0)
    v, u = np.nonzero(depth0 > 0)
    kpts0 = np.stack([u, v], 1)[::97].astype(np.float64)
    z = depth0[kpts0[:, 1].astype(int), kpts0[:, 0].astype(int)].astype(np.float64)
    X0 = np.linalg.inv(f0.K) @ np.vstack([kpts0.T, np.ones(len(kpts0))]) * z
    X_world = f0.R.T @ (X0 - f0.t[:, None])
    x1 = f1.K @ (f1.R @ X_world + f1.t[:, None])
    kpts1 = (x1[:2] / x1[2]).T
    np.testing.assert_allclose(depth_match_error(f0, f1, kpts0, kpts1, depth0), 0.0, atol=1e-9)
    np.testing.assert_allclose(depth_match_error(f0, f1, kpts0, kpts1 + [3.0, -4.0]), 5.0, atol=1e-9)
    R, t = relative_pose(f0, f1)
    np.testing.assert_allclose(R @ f0.R, f1.R, atol=1e-6)  # poses are float32 text
    np.testing.assert_allclose(R @ f0.t + t, f1.t, atol=1e-6)
    # background, outside the image, NaN keypoint
    bad = np.array([[5.0, 5.0], [-3.0, 100.0], [100.0, 480.0], [np.nan, 3.0]])
    assert np.isnan(depth_match_error(f0, f1, bad, np.zeros((4, 2)), depth0)).all()
    with pytest.raises(ValueError, match="kpts1"):
        depth_match_error(f0, f1, bad, np.zeros((4, 3)), depth0)
    with pytest.raises(ValueError, match="same length"):
        depth_match_error(f0, f1, bad, np.zeros((3, 2)), depth0)


@needs_castle
@pytest.mark.parametrize("i", [0, 10, 20, 30])
def test_depth_match_error_on_tracked_corners(frames, i):
    # Image evidence independent of the poses: pyramidal Lucas-Kanade between consecutive frames.
    # Measured median error over all consecutive pairs 0.04-0.28 px.
    img0 = cv2.imread(str(frames[i].image_path), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(frames[i + 1].image_path), cv2.IMREAD_GRAYSCALE)
    corners = cv2.goodFeaturesToTrack(img0, 500, 0.01, 5).reshape(-1, 2)
    tracked, status, _ = cv2.calcOpticalFlowPyrLK(img0, img1, corners, None, winSize=(15, 15), maxLevel=2)
    ok = status.ravel() == 1
    err = depth_match_error(frames[i], frames[i + 1], corners[ok], tracked[ok])
    err = err[np.isfinite(err)]
    assert len(err) > 30
    assert np.median(err) < 0.5
