"""Ground truth of an image pair from depth maps and poses: correspondences, keypoint matches, overlap, viewpoint.

This is what dense and sparse matchers train and are scored against on the world's pairs
(:mod:`visloc.data.world.pairs`), and what any depth-and-pose pair (MegaDepth-like) can use.

Conventions:
    Pixels ``(u, v)``: the centre of the top-left pixel at ``(0, 0)`` (OpenCV); a pixel covers
    ``[u - 0.5, u + 0.5)``. ``K`` [3, 3] in that convention. Poses are ``cam_from_world``
    (:class:`visloc.io.poses.CameraPose`). Depth maps are float32 ``[H, W]`` z-depths in metres (along the
    optical axis, not the ray length); "no surface" (sky) is ``0`` in the files and ``inf`` in the renderer's
    frames: both are accepted, any value that is not finite and > 0 means no surface.

Depth at a sub-pixel position (:func:`sample_depth`):
    the inverse depth interpolated bilinearly over the 2 x 2 pixel cell around the position when its four pixels
    are surfaces lying on one plane (for a plane, ``1 / z`` is affine in ``(u, v)``, so the interpolation is then
    exact; the test is ``i00 + i11 == i01 + i10`` up to :data:`PLANAR_TOL` relative), else the nearest pixel's
    depth. At integer positions this is the pixel's own depth.

Co-visibility (the occlusion check, as in the ground truth of SuperGlue and LoFTR):
    a point of image 0 with a surface is co-visible in image 1 when its 3D point lies in front of camera 1,
    projects inside image 1 (``-0.5 <= u < W - 0.5``, same for ``v``), and the depth of image 1 there agrees
    with its projected z within ``rel_tol * z`` (default 0.1, the 10 % relative depth error SuperGlue used for
    ScanNet and MegaDepth; LoFTR used 0.15 for ScanNet).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from visloc.io.poses import CameraPose

#: matches0 / matches1 value of a keypoint with no correspondence among the other image's keypoints
UNMATCHED = -1
#: matches0 / matches1 value of a keypoint whose label is uncertain (between the thresholds, no reliable depth)
IGNORE = -2
#: relative tolerance of the planarity test of a 2 x 2 depth cell (the renderer's float32 planes stay below 3e-7)
PLANAR_TOL = 2e-6
#: default relative depth tolerance of the occlusion check
REL_TOL = 0.1


def _surface(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


def _check_depth(depth: np.ndarray, where: str) -> np.ndarray:
    d = np.asarray(depth)
    if d.ndim != 2 or min(d.shape) < 2:
        raise ValueError(f"{where}: depth must be [H, W] with H, W >= 2, got {d.shape}")
    return d.astype(np.float64, copy=False)


def _check_uv(uv: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(uv, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{where}: points must be [N, 2], got {a.shape}")
    return a


def sample_depth(depth: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth of ``depth`` at the sub-pixel positions ``uv`` (see the module docstring for the rule).

    Args:
        depth: float ``[H, W]`` z-depth in metres, no surface as 0 or inf.
        uv: ``[N, 2]`` pixel positions.

    Returns:
        ``z [N]`` float64 metres (NaN where invalid) and ``valid [N]``: inside the image and on a surface.
    """
    d = _check_depth(depth, "sample_depth")
    pts = _check_uv(uv, "sample_depth")
    H, W = d.shape
    surf = _surface(d)
    inv = np.zeros_like(d)
    np.divide(1.0, d, out=inv, where=surf)
    u, v = pts[:, 0], pts[:, 1]
    inside = np.isfinite(u) & np.isfinite(v) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    uc = np.clip(np.nan_to_num(u), -0.5, W - 0.5)
    vc = np.clip(np.nan_to_num(v), -0.5, H - 0.5)
    x0 = np.clip(np.floor(uc).astype(np.int64), 0, W - 2)  # the border half-pixels extrapolate the edge cell
    y0 = np.clip(np.floor(vc).astype(np.int64), 0, H - 2)
    fx, fy = uc - x0, vc - y0
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    i00, i01, i10, i11 = (inv[r, c] for r, c in corners)
    cell_surface = np.logical_and.reduce([surf[r, c] for r, c in corners])
    scale = np.maximum.reduce([i00, i01, i10, i11])
    planar = cell_surface & (np.abs(i00 + i11 - i01 - i10) <= PLANAR_TOL * scale)
    bilinear = (1 - fy) * ((1 - fx) * i00 + fx * i01) + fy * ((1 - fx) * i10 + fx * i11)
    yn = np.clip(np.rint(vc).astype(np.int64), 0, H - 1)
    xn = np.clip(np.rint(uc).astype(np.int64), 0, W - 1)
    inv_out = np.where(planar, bilinear, inv[yn, xn])
    valid = inside & (planar | surf[yn, xn]) & (inv_out > 0)
    z = np.full(len(pts), np.nan)
    np.divide(1.0, inv_out, out=z, where=valid)
    return z, valid


def warp(uv0: np.ndarray, z0: np.ndarray, K0: np.ndarray, pose0: CameraPose, K1: np.ndarray,
         pose1: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """Project pixels of image 0 with known depth into image 1.

    Args:
        uv0: ``[N, 2]`` pixels of image 0.
        z0: ``[N]`` their z-depths in camera 0 (metres).
        K0: [3, 3] intrinsics of image 0.
        pose0: ``cam_from_world`` of camera 0.
        K1: [3, 3] intrinsics of image 1.
        pose1: ``cam_from_world`` of camera 1.

    Returns:
        ``uv1 [N, 2]`` float64 (meaningless where ``z1 <= 0``) and ``z1 [N]``, the z-depths in camera 1.
    """
    pts = _check_uv(uv0, "warp")
    rays = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.linalg.inv(np.asarray(K0, np.float64)).T
    cam1 = pose1.transform((rays * np.asarray(z0, np.float64)[:, None] - pose0.t) @ pose0.R)
    z1 = cam1[:, 2]
    uv1 = np.full((len(pts), 2), np.nan)
    np.divide((cam1 @ np.asarray(K1, np.float64).T)[:, :2], z1[:, None], out=uv1, where=z1[:, None] > 0)
    return uv1, z1


def correspondences(uv0: np.ndarray, depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose, depth1: np.ndarray,
                    K1: np.ndarray, pose1: CameraPose, *, rel_tol: float = REL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Map pixels of image 0 to image 1 through depth and poses, with the occlusion check by depth.

    Args:
        uv0: ``[N, 2]`` pixel positions of image 0 (sub-pixel allowed).
        depth0: ``[H0, W0]`` depth map of image 0 (metres, no surface as 0 or inf).
        K0: [3, 3] intrinsics of image 0 (OpenCV, pixel centre at 0).
        pose0: ``cam_from_world`` of camera 0.
        depth1: ``[H1, W1]`` depth map of image 1.
        K1: [3, 3] intrinsics of image 1.
        pose1: ``cam_from_world`` of camera 1.
        rel_tol: relative depth tolerance of the occlusion check.

    Returns:
        ``uv1 [N, 2]`` float64 positions in image 1 (NaN where there is no surface or the point is behind
        camera 1) and ``valid [N]`` bool: co-visible (on a surface, in front of camera 1, inside image 1, not
        occluded there).
    """
    z0, has_depth = sample_depth(depth0, uv0)
    uv1, z1 = warp(uv0, np.where(has_depth, z0, 1.0), K0, pose0, K1, pose1)
    uv1[~has_depth] = np.nan
    z1_seen, seen = sample_depth(depth1, np.nan_to_num(uv1, nan=-1e9))
    front = has_depth & (z1 > 0)
    with np.errstate(invalid="ignore"):
        agree = np.abs(z1_seen - z1) <= rel_tol * np.abs(z1)
    return uv1, front & seen & agree


def grid_points(size: tuple[int, int], stride: int) -> np.ndarray:
    """``[N, 2]`` float64 pixel centres ``(u, v)`` every ``stride`` pixels of an image of ``size`` (W, H).

    The first point of each row and column is at ``stride // 2`` (the centre of the first ``stride`` cell for odd
    strides); rows are listed one after the other (index ``row * ceil(W / stride) + col``).
    """
    W, H = size
    if stride < 1 or W < 1 or H < 1:
        raise ValueError(f"grid_points: need size >= 1 and stride >= 1, got {size}, {stride}")
    us = np.arange(stride // 2, W, stride, dtype=np.float64)
    vs = np.arange(stride // 2, H, stride, dtype=np.float64)
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], 1)


def overlap_ratio(depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose, depth1: np.ndarray, K1: np.ndarray,
                  pose1: CameraPose, *, stride: int = 4, rel_tol: float = REL_TOL) -> float:
    """Share of the pixels of image 0 that are co-visible in image 1 (:func:`correspondences` valid).

    The pixels are those of :func:`grid_points` with ``stride`` (1: every pixel); the denominator counts every
    grid pixel, sky included, so a view half filled by sky overlaps at most 0.5. Not symmetric: see
    :func:`pair_overlap`.
    """
    d0 = _check_depth(depth0, "overlap_ratio")
    uv0 = grid_points((d0.shape[1], d0.shape[0]), stride)
    _, valid = correspondences(uv0, d0, K0, pose0, depth1, K1, pose1, rel_tol=rel_tol)
    return float(valid.mean())


def pair_overlap(depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose, depth1: np.ndarray, K1: np.ndarray,
                 pose1: CameraPose, *, stride: int = 4, rel_tol: float = REL_TOL) -> tuple[float, float, float]:
    """``(overlap_0to1, overlap_1to0, overlap)`` of a pair; ``overlap = min`` of the two directed ratios.

    The symmetric score is the minimum, so a pair of overlap ``o`` shows at least ``o`` of each image in the
    other (D2-Net's sparse MegaDepth score, shared 3D points over the smaller point count, is closer to the
    maximum; glue-factory tests ``max(overlap_0to1, overlap_1to0)`` against its minimum).
    """
    o01 = overlap_ratio(depth0, K0, pose0, depth1, K1, pose1, stride=stride, rel_tol=rel_tol)
    o10 = overlap_ratio(depth1, K1, pose1, depth0, K0, pose0, stride=stride, rel_tol=rel_tol)
    return o01, o10, min(o01, o10)


def rotation_angle_deg(pose0: CameraPose, pose1: CameraPose) -> float:
    """Angle in degrees of the relative rotation ``R1 R0^T`` (the pose-error metric's rotation, in [0, 180])."""
    R = pose1.R @ pose0.R.T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def baseline_m(pose0: CameraPose, pose1: CameraPose) -> float:
    """Distance in metres between the two camera centres."""
    return float(np.linalg.norm(pose1.center - pose0.center))


@dataclass(frozen=True, eq=False)
class GtMatches:
    """Keypoint-level ground truth of a pair (glue-factory's layout: ``matches0[i] = j``, -1, -2).

    Attributes:
        matches0: int32 ``[N0]``: index into ``kp1`` of the match of ``kp0[i]``, :data:`UNMATCHED` (-1) when
            it has none, :data:`IGNORE` (-2) when uncertain.
        matches1: int32 ``[N1]``: the same from image 1 (``matches1[matches0[i]] == i`` for every match).
        proj0: float64 ``[N0, 2]``: ``kp0`` projected into image 1 (NaN without a surface).
        proj1: float64 ``[N1, 2]``: ``kp1`` projected into image 0.
        covisible0: bool ``[N0]``: ``kp0`` co-visible in image 1 (:func:`correspondences`).
        covisible1: bool ``[N1]``.
    """

    matches0: np.ndarray
    matches1: np.ndarray
    proj0: np.ndarray
    proj1: np.ndarray
    covisible0: np.ndarray
    covisible1: np.ndarray

    @property
    def pairs(self) -> np.ndarray:
        """int32 ``[M, 2]`` index pairs ``(i, j)`` of the matches, sorted by ``i``."""
        i = np.flatnonzero(self.matches0 >= 0)
        return np.stack([i, self.matches0[i]], 1).astype(np.int32)


def _nearest(points: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and distance of the nearest of ``targets [M, 2]`` to each of ``points [N, 2]`` (inf if none)."""
    from scipy.spatial import KDTree

    n = len(points)
    ok = np.isfinite(points).all(1)
    idx, dist = np.zeros(n, np.int64), np.full(n, np.inf)
    if len(targets) and ok.any():
        d, j = KDTree(targets).query(points[ok])
        idx[ok], dist[ok] = j, d
    return idx, dist


def _labels(kp_depth_ok: np.ndarray, near_surface: np.ndarray, covisible: np.ndarray, dist: np.ndarray,
            neg_th: float) -> np.ndarray:
    """-1 / -2 labels of one side before the positives are set (see :func:`gt_matches`)."""
    unmatched = (kp_depth_ok & (~covisible | (dist > neg_th))) | (~kp_depth_ok & ~near_surface)
    return np.where(unmatched, UNMATCHED, IGNORE).astype(np.int32)


def gt_matches(kp0: np.ndarray, kp1: np.ndarray, depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose,
               depth1: np.ndarray, K1: np.ndarray, pose1: CameraPose, *, pos_th: float = 3.0, neg_th: float = 5.0,
               rel_tol: float = REL_TOL) -> GtMatches:
    """Ground-truth assignment of two keypoint sets through depth and poses (as glue-factory's / LoFTR's).

    ``kp0[i]`` and ``kp1[j]`` match when both are co-visible, ``j`` is the keypoint of image 1 nearest to the
    projection of ``i``, ``i`` the keypoint of image 0 nearest to the projection of ``j`` (mutual nearest), and
    both reprojection distances are below ``pos_th`` pixels. A keypoint with no match is :data:`UNMATCHED` when
    it is sure to have none: on a surface and not co-visible (outside image 1, behind it, occluded), or
    co-visible with no keypoint of the other image within ``neg_th`` pixels of its projection, or on the sky
    with no surface within one pixel; every other keypoint is :data:`IGNORE`. For LoFTR-style coarse
    supervision, pass :func:`grid_points` of the coarse cells as ``kp0`` / ``kp1`` with ``pos_th = stride / 2``.

    Args:
        kp0: ``[N0, 2]`` keypoints of image 0 (pixels, centre at 0).
        kp1: ``[N1, 2]`` keypoints of image 1.
        depth0: ``[H0, W0]`` depth map of image 0 (metres, no surface as 0 or inf).
        K0: [3, 3] intrinsics of image 0.
        pose0: ``cam_from_world`` of camera 0.
        depth1: ``[H1, W1]`` depth map of image 1.
        K1: [3, 3] intrinsics of image 1.
        pose1: ``cam_from_world`` of camera 1.
        pos_th: largest reprojection distance of a match (pixels).
        neg_th: smallest distance to every keypoint of a co-visible unmatched keypoint (pixels, >= pos_th).
        rel_tol: relative depth tolerance of the occlusion check.
    """
    if not 0 < pos_th <= neg_th:
        raise ValueError(f"gt_matches: need 0 < pos_th <= neg_th, got {pos_th}, {neg_th}")
    kp0, kp1 = _check_uv(kp0, "gt_matches kp0"), _check_uv(kp1, "gt_matches kp1")
    proj0, cov0 = correspondences(kp0, depth0, K0, pose0, depth1, K1, pose1, rel_tol=rel_tol)
    proj1, cov1 = correspondences(kp1, depth1, K1, pose1, depth0, K0, pose0, rel_tol=rel_tol)
    j0, d0 = _nearest(proj0, kp1)
    i1, d1 = _nearest(proj1, kp0)
    labels = []
    for kp, depth, cov, dist in ((kp0, depth0, cov0, d0), (kp1, depth1, cov1, d1)):
        has_depth = sample_depth(depth, kp)[1]
        labels.append(_labels(has_depth, _near_surface(depth, kp), cov, dist, neg_th))
    m0, m1 = labels
    idx0 = np.flatnonzero(cov0 & (d0 < pos_th))
    j = j0[idx0]
    mutual = cov1[j] & (d1[j] < pos_th) & (i1[j] == idx0)
    idx0, j = idx0[mutual], j[mutual]
    m0[idx0] = j
    m1[j] = idx0
    return GtMatches(m0, m1, proj0, proj1, cov0, cov1)


def _near_surface(depth: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: a surface pixel within one pixel (3 x 3) of the nearest pixel of each keypoint."""
    d = _check_depth(depth, "gt_matches")
    H, W = d.shape
    grown = cv2.dilate(_surface(d).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    u = np.clip(np.rint(np.nan_to_num(kp[:, 0])), 0, W - 1).astype(np.int64)
    v = np.clip(np.rint(np.nan_to_num(kp[:, 1])), 0, H - 1).astype(np.int64)
    return grown[v, u]


__all__ = [
    "IGNORE", "PLANAR_TOL", "REL_TOL", "UNMATCHED", "GtMatches", "baseline_m", "correspondences", "grid_points",
    "gt_matches", "overlap_ratio", "pair_overlap", "rotation_angle_deg", "sample_depth", "warp",
]
