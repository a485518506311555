"""Middlebury Motorcycle from scikit-image (visloc.data.motorcycle): loader, EPE metric, GT check."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visloc.data.motorcycle import StereoPair, load_motorcycle, stereo_match_epe


@pytest.fixture(scope="module")
def pair() -> StereoPair:
    return load_motorcycle()


def test_load_shapes_and_ranges(pair):
    assert (pair.name0, pair.name1) == ("motorcycle_left.png", "motorcycle_right.png")
    for img in (pair.left, pair.right):
        assert img.shape == (500, 741, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
    d = pair.disparity
    assert d.shape == (500, 741) and d.dtype == np.float32
    assert not np.isinf(d).any()
    assert 0.05 < np.isnan(d).mean() < 0.1  # 7.3% unknown
    assert 5.0 < np.nanmin(d) and np.nanmax(d) < 64.0


def test_epe_exact_on_hand_built_map():
    d = np.array([[1.0, 2.0, 3.0, 4.0],
                  [0.5, np.nan, np.inf, 2.5],
                  [0.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    kpts0 = np.array([
        [3.0, 0.0],    # d=4 -> (-1, 0)
        [2.2, 2.3],    # nearest (2, 2), d=2 -> (0.2, 2.3)
        [3.0, 1.0],    # d=2.5 -> (0.5, 1)
        [1.0, 1.0],    # NaN disparity
        [2.0, 1.0],    # inf disparity
        [4.0, 0.0],    # outside (x rounds to 4)
        [0.0, -0.6],   # outside (y rounds to -1)
        [np.nan, 0.0],  # not a point
    ])
    kpts1 = np.array([
        [-1.0, 0.0],
        [3.2, 6.3],    # dx=3, dy=4 -> 5
        [0.5, 2.0],    # dy=1
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 0.0],
    ])
    epe = stereo_match_epe(d, kpts0, kpts1)
    np.testing.assert_allclose(epe[:3], [0.0, 5.0, 1.0], atol=1e-12)
    assert np.isnan(epe[3:]).all()


def test_epe_rejects_bad_shapes():
    d = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="kpts0"):
        stereo_match_epe(d, np.zeros((3, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same length"):
        stereo_match_epe(d, np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="disparity"):
        stereo_match_epe(np.zeros((4, 4, 1)), np.zeros((3, 2)), np.zeros((3, 2)))


def test_epe_zero_for_ground_truth_matches(pair):
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(np.isfinite(pair.disparity))
    idx = rng.choice(len(xs), 500, replace=False)
    kpts0 = np.stack([xs[idx], ys[idx]], 1).astype(np.float64)
    kpts1 = kpts0 - np.stack([pair.disparity[ys[idx], xs[idx]], np.zeros(500)], 1)
    np.testing.assert_allclose(stereo_match_epe(pair.disparity, kpts0, kpts1), 0.0, atol=1e-5)
    shifted = stereo_match_epe(pair.disparity, kpts0, kpts1 + [3.0, 4.0])
    np.testing.assert_allclose(shifted, 5.0, atol=1e-5)


def _warp_error(pair: StereoPair, sign: float, shift: float = 0.0) -> float:
    """Mean |left - right warped to (x + sign * d + shift, y)| over valid pixels landing inside."""
    h, w = pair.disparity.shape
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    valid = np.isfinite(pair.disparity)
    map_x = (x + sign * np.where(valid, pair.disparity, 0.0) + shift).astype(np.float32)
    warped = cv2.remap(pair.right, map_x, y, cv2.INTER_LINEAR)
    ok = valid & (map_x >= 0) & (map_x <= w - 1)
    return float(np.abs(warped[ok] - pair.left[ok]).mean())


def test_ground_truth_is_photometrically_consistent(pair):
    # Measured: 0.030 with (x - d, y); 0.045 / 0.047 shifted by -1 / +1 px; 0.185 with (x + d, y).
    err = _warp_error(pair, -1.0)
    assert err < 0.035
    assert _warp_error(pair, -1.0, 1.0) > err + 0.01
    assert _warp_error(pair, -1.0, -1.0) > err + 0.01
    assert _warp_error(pair, +1.0) > 0.1
