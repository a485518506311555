"""Small geometric helpers on numpy arrays (pixel-centre-at-0 coordinates)."""

from __future__ import annotations

import numpy as np


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply homography ``H_0to1`` ``[3, 3]`` to ``[N, 2]`` points of image 0."""
    pts = np.concatenate([points, np.ones((len(points), 1))], 1) @ H.T
    return pts[:, :2] / pts[:, 2:3]


def image_corners(width: int, height: int) -> np.ndarray:
    """The four outer corners ``[4, 2]`` of a ``W x H`` image, as SuperPoint/LightGlue evaluate them."""
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)


def scale_homography(H: np.ndarray, scale0: tuple[float, float], scale1: tuple[float, float]) -> np.ndarray:
    """``H`` between resized images -> ``H`` between originals, for ``scale = original / resized``.

    A point maps as ``p_orig = (p + 0.5) * s - 0.5``, an affine map ``A(s)``; the result is
    ``A(s1) @ H @ A(s0)^-1``.
    """

    def affine(s: tuple[float, float]) -> np.ndarray:
        return np.array([[s[0], 0, 0.5 * s[0] - 0.5], [0, s[1], 0.5 * s[1] - 0.5], [0, 0, 1]])

    return affine(scale1) @ H @ np.linalg.inv(affine(scale0))


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrix ``[3, 3]`` of ``v [3]``."""
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def relative_pose(R0: np.ndarray, t0: np.ndarray, R1: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cam1_from_cam0`` from two ``cam_from_world`` poses."""
    R = R1 @ R0.T
    return R, t1 - R @ t0
