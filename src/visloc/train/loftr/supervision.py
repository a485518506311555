"""Coarse ground truth of LoFTR from depth and poses: which cell of image 1 each cell of image 0 shows.

LoFTR's coarse supervision (zju3dv/LoFTR ``spvs_coarse``) with the occlusion check that the world's exact depth
allows (LoFTR drops it for MegaDepth's noisy depth):

1. the cell centres of each coarse grid, pixel-centre-at-0 in the resized image: ``x = (col + 0.5) r - 0.5``,
   ``y = (row + 0.5) r - 0.5`` (:func:`cell_centers`);
2. mapped to the view's original pixels, ``original = (resized + 0.5) * scale - 0.5``, warped into the other
   image with :func:`visloc.data.world.pairs_gt.correspondences` (depth, poses, occlusion check by depth,
   round trip) and mapped to the other image's resized pixels;
3. each warped centre falls in one cell of the other grid, the cell whose centre is nearest to it
   (:func:`cell_index`; outside the grid or not co-visible: none);
4. the loop-back check keeps cell ``i`` of image 0 and ``j = nearest0[i]`` of image 1 when
   ``nearest1[j] == i``. ``nearest1`` is a function, so the matches are one-to-one by construction.

Cells are indexed row-major, ``index = row * w + col``, as the model's ``[B, L, S]`` matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from visloc.data.scene.flow import REL_TOL
from visloc.data.world.pairs_gt import CYCLE_PX, UNMATCHED, View, correspondences
from visloc.models.coarse_loftr import cell_centers as model_cell_centers


def _check_grid(hw: Sequence[int], resolution: int, where: str) -> tuple[int, int]:
    if len(hw) != 2 or min(int(hw[0]), int(hw[1])) < 1:
        raise ValueError(f"{where}: grid (h, w) must be two positive ints, got {tuple(hw)}")
    if int(resolution) < 1:
        raise ValueError(f"{where}: resolution must be >= 1 pixel, got {resolution}")
    return int(hw[0]), int(hw[1])


def cell_centers(hw: Sequence[int], resolution: int) -> np.ndarray:
    """``[h*w, 2]`` float64 ``(x, y)`` cell centres (``models.coarse_loftr.cell_centers``: pixel-centre-at-0)."""
    h, w = _check_grid(hw, resolution, "cell_centers")
    return model_cell_centers(h, w, int(resolution)).double().numpy()


def cell_index(xy: np.ndarray, hw: Sequence[int], resolution: int) -> np.ndarray:
    """``[N]`` int64 row-major index of the cell of an ``(h, w)`` grid holding each point ``xy [N, 2]`` (pixels).

    The cell whose centre is nearest (cell ``col`` spans ``[col r - 0.5, (col + 1) r - 0.5)`` in x);
    :data:`~visloc.data.world.pairs_gt.UNMATCHED` (-1) for points outside the grid or not finite.
    """
    h, w = _check_grid(hw, resolution, "cell_index")
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    finite = np.asarray(np.isfinite(xy).all(axis=1), bool)
    cr = np.floor((np.where(finite[:, None], xy, -1.0) + 0.5) / float(resolution)).astype(np.int64)
    col, row = cr[:, 0], cr[:, 1]
    inside = finite & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return np.where(inside, row * w + col, UNMATCHED).astype(np.int64)


def _nearest(view_a: View, view_b: View, hw_a: tuple[int, int], hw_b: tuple[int, int], resolution: int,
             scale_a: np.ndarray, scale_b: np.ndarray, rel_tol: float, cycle_px: float | None) -> np.ndarray:
    """``[h_a * w_a]`` int64: the cell of grid b that each cell centre of grid a lands in (-1: none)."""
    uv_a = (cell_centers(hw_a, resolution) + 0.5) * scale_a - 0.5
    uv_b, valid = correspondences(uv_a, view_a, view_b, rel_tol=rel_tol, cycle_px=cycle_px)
    with np.errstate(invalid="ignore"):
        xy_b = (uv_b + 0.5) / scale_b - 0.5
    return np.where(valid, cell_index(xy_b, hw_b, resolution), UNMATCHED).astype(np.int64)


def _scale(scale: Sequence[float], where: str) -> np.ndarray:
    s = np.asarray(scale, np.float64).reshape(-1)
    if s.shape != (2,) or not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{where}: scale must be two positive numbers (sx, sy), got {tuple(np.ravel(scale))}")
    return s


def coarse_gt(view0: View, view1: View, hw0: Sequence[int], hw1: Sequence[int], resolution: int,
              scale0: Sequence[float] = (1.0, 1.0), scale1: Sequence[float] = (1.0, 1.0), *,
              rel_tol: float = REL_TOL, cycle_px: float | None = CYCLE_PX) -> np.ndarray:
    """LoFTR's coarse ground truth of a pair (module docstring): the mutual cell matches.

    Args:
        view0: image 0 at its original size (depth, K, pose, labels).
        view1: image 1.
        hw0: ``(h0, w0)`` coarse grid of the resized image 0 (``H // resolution``, ``W // resolution``).
        hw1: ``(h1, w1)`` coarse grid of the resized image 1.
        resolution: cell size in resized pixels.
        scale0: ``(sx, sy) = original / resized`` of image 0 (``(1, 1)``: not resized).
        scale1: the same of image 1.
        rel_tol: relative depth tolerance of the occlusion check.
        cycle_px: round-trip tolerance of ``correspondences`` in original pixels (None: no round trip).

    Returns:
        ``matches0 [h0 * w0]`` int64: the index in grid 1 of the match of each cell of grid 0, -1 where none.
    """
    g0, g1 = _check_grid(hw0, resolution, "coarse_gt"), _check_grid(hw1, resolution, "coarse_gt")
    s0, s1 = _scale(scale0, "coarse_gt: scale0"), _scale(scale1, "coarse_gt: scale1")
    nearest0 = _nearest(view0, view1, g0, g1, resolution, s0, s1, rel_tol, cycle_px)
    nearest1 = _nearest(view1, view0, g1, g0, resolution, s1, s0, rel_tol, cycle_px)
    has = nearest0 >= 0
    loop = np.zeros_like(has)
    loop[has] = nearest1[nearest0[has]] == np.flatnonzero(has)
    return np.where(loop, nearest0, UNMATCHED).astype(np.int64)


__all__ = ["cell_centers", "cell_index", "coarse_gt"]
