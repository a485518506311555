"""Middlebury 2014 "Motorcycle" stereo pair with ground-truth disparity, as shipped by scikit-image.

``skimage.data.stereo_motorcycle()`` (files bundled with the pip package, no download): rectified
RGB images 741x500 and the left image's disparity (``inf`` where unknown, 7% of pixels).

Convention (Middlebury): the left pixel ``(x, y)`` matches the right pixel ``(x - d(x, y), y)``, with
integer coordinates at pixel centres. Measured by warping the right image into the left one
(bilinear, RGB in ``[0, 1]``, the 90% of pixels with a disparity that lands inside the right image):
mean absolute error 0.030 (7.7/255), median 0.012. The minimum is at the ground truth: shifting the
warp by +-0.25 / 0.5 / 1 px in x gives 0.031-0.033 / 0.035-0.037 / 0.045-0.047, by +-0.5 px in y
0.036-0.039, scaling the disparity by 1 +- 2% 0.039-0.041; reading the match as ``(x + d, y)`` gives
0.185 and ignoring the disparity 0.152.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import data as skdata

from visloc.data.errors import DatasetError
from visloc.utils.checks import matched_keypoints


@dataclass(frozen=True)
class StereoPair:
    """Rectified pair: ``left``, ``right`` float32 ``[H, W, 3]`` RGB in ``[0, 1]``.

    ``disparity`` is float32 ``[H, W]`` on the left image's pixels, NaN where unknown; the left pixel
    ``(x, y)`` matches the right pixel ``(x - d, y)``.
    """

    name0: str
    name1: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray


def load_motorcycle() -> StereoPair:
    """The Middlebury Motorcycle pair from ``skimage.data.stereo_motorcycle``.

    Raises:
        DatasetError: scikit-image does not have the files (and would need ``pooch`` and the network).
    """
    try:
        left, right, disparity = skdata.stereo_motorcycle()
    except (OSError, KeyError, ModuleNotFoundError, ConnectionError) as e:
        raise DatasetError(f"skimage.data.stereo_motorcycle: files not available ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
    disparity = np.asarray(disparity, dtype=np.float32)
    disparity = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    return StereoPair(
        name0="motorcycle_left.png",
        name1="motorcycle_right.png",
        left=np.asarray(left, dtype=np.float32) / 255.0,
        right=np.asarray(right, dtype=np.float32) / 255.0,
        disparity=disparity,
    )


def stereo_match_epe(disparity: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray) -> np.ndarray:
    """End-point error ``[N]`` in pixels of matches ``kpts0 [N, 2]`` (left) -> ``kpts1 [N, 2]`` (right).

    The true match of ``kpts0 = (x, y)`` is ``(x - d, y)`` with ``d`` the disparity at the *nearest*
    pixel of ``kpts0`` (no interpolation across depth edges); the error is
    ``sqrt(((x - d) - x1)^2 + (y - y1)^2)``. NaN where ``kpts0`` is outside the map or ``d`` is
    NaN or infinite.

    Args:
        disparity: ``[H, W]`` left-image disparity in pixels.
        kpts0: keypoints ``(x, y)`` in the left image, pixel centres at integers.
        kpts1: their matches in the right image.
    """
    disparity = np.asarray(disparity)
    if disparity.ndim != 2:
        raise ValueError(f"disparity must have shape [H, W], got {list(disparity.shape)}")
    kpts0, kpts1 = matched_keypoints(kpts0, kpts1)
    h, w = disparity.shape
    finite = np.isfinite(kpts0).all(1)
    xi = np.round(np.where(finite, kpts0[:, 0], -1)).astype(np.int64)
    yi = np.round(np.where(finite, kpts0[:, 1], -1)).astype(np.int64)
    inside = finite & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    d = np.full(len(kpts0), np.nan)
    d[inside] = disparity[yi[inside], xi[inside]]
    d[~np.isfinite(d)] = np.nan
    return np.hypot(kpts0[:, 0] - d - kpts1[:, 0], kpts0[:, 1] - kpts1[:, 1])
