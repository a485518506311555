"""Ground truth of an image pair from depth maps and poses: correspondences, keypoint matches, overlap, viewpoint.

This is what dense and sparse matchers train and are scored against on the world's pairs
(:mod:`visloc.data.world.pairs`; :func:`~visloc.data.world.pairs_files.read_pair` loads a pair's two
:class:`View` objects from the files), and what any depth-and-pose pair (MegaDepth-like) can use.

Conventions:
    Pixels ``(u, v)``: the centre of the top-left pixel at ``(0, 0)`` (OpenCV). ``K`` [3, 3] in that convention.
    Poses are ``cam_from_world`` (:class:`visloc.io.poses.CameraPose`). Depth maps are float32 ``[H, W]``
    z-depths in metres (along the optical axis, not the ray length); "no surface" (sky) is ``0`` in the files and
    ``inf`` in the renderer's frames, both accepted.

The pixel mapping is the renderer's, :func:`visloc.data.scene.flow.map_pixels`: a point of image 0 is carried to
image 1 through its depth and the poses, and is *co-visible* when it lies in front of camera 1, inside image 1
(within its pixel centres) and is not occluded there (the depth of image 1 agrees with its projected z within
``rel_tol``, default 1 %: the world's depth is exact, where SuperGlue allowed 10 % and LoFTR 15 % for sensor
depth), and it maps back to where it came from within ``cycle_px`` (:func:`correspondences`). With the plane
labels of a :class:`View` (the files store them) a sub-pixel position gets its exact depth and positions on a
plane edge are invalid; without labels, the nearest pixel's depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from visloc.data.scene.flow import REL_TOL, map_pixels
from visloc.io.poses import CameraPose

#: default round-trip tolerance of :func:`correspondences` (pixels)
CYCLE_PX = 0.5
#: matches0 / matches1 value of a keypoint with no correspondence among the other image's keypoints
UNMATCHED = -1
#: matches0 / matches1 value of a keypoint whose label is uncertain (between the thresholds, on an edge)
IGNORE = -2


@dataclass(frozen=True, eq=False)
class View:
    """One image of a pair with its geometry.

    Attributes:
        depth: float32 ``[H, W]`` z-depth (metres; 0 or ``inf``: sky).
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
        labels: int32 ``[H, W]`` surface labels (the world's plane index, -1 sky), or None.
    """

    depth: np.ndarray
    K: np.ndarray
    pose: CameraPose
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if np.ndim(self.depth) != 2:
            raise ValueError(f"View: depth must be [H, W], got {np.shape(self.depth)}")
        if np.shape(self.K) != (3, 3):
            raise ValueError(f"View: K must be [3, 3], got {np.shape(self.K)}")
        if self.labels is not None and np.shape(self.labels) != np.shape(self.depth):
            raise ValueError(f"View: labels must be {np.shape(self.depth)} like depth, got {np.shape(self.labels)}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.depth.shape[1]), int(self.depth.shape[0])


def correspondences(uv0: np.ndarray, view0: View, view1: View, *, rel_tol: float = REL_TOL,
                    cycle_px: float | None = CYCLE_PX) -> tuple[np.ndarray, np.ndarray]:
    """Map pixels of image 0 to image 1 through depth and poses, with the occlusion check by depth.

    Args:
        uv0: ``[N, 2]`` pixel positions of image 0 (sub-pixel allowed).
        view0: image 0 (depth, K, pose, labels).
        view1: image 1.
        rel_tol: relative depth tolerance of the occlusion check.
        cycle_px: a co-visible point must also map back (image 1 to image 0, the same way) to within
            ``cycle_px`` pixels of ``uv0``. ``map_pixels`` keeps a point visible when its depth agrees with any of
            the four pixels around it in image 1, so that silhouettes stay visible; the round trip drops the
            points that land on the occluder's pixel within a pixel of an occluding edge. None: no round trip.

    Returns:
        ``uv1 [N, 2]`` float64 positions in image 1 (NaN where undefined: sky, a plane edge with labels, behind
        camera 1) and ``valid [N]`` bool: co-visible (in front of camera 1, inside image 1, not occluded).
    """
    uv1, valid = map_pixels(uv0, view0.depth, view0.K, view0.pose, view1.K, view1.pose, view1.depth,
                            rel_tol=rel_tol, labels0=view0.labels, labels1=view1.labels)
    if cycle_px is not None and valid.any():
        idx = np.flatnonzero(valid)
        back, ok = map_pixels(uv1[idx], view1.depth, view1.K, view1.pose, view0.K, view0.pose, view0.depth,
                              rel_tol=rel_tol, labels0=view1.labels, labels1=view0.labels)
        with np.errstate(invalid="ignore"):
            ok &= np.linalg.norm(back - np.asarray(uv0, np.float64)[idx], axis=1) <= cycle_px
        valid[idx[~ok]] = False
    return uv1, valid


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


def overlap_ratio(view0: View, view1: View, *, stride: int = 4, rel_tol: float = REL_TOL) -> float:
    """Share of the pixels of image 0 that are co-visible in image 1.

    Co-visible as ``map_pixels`` decides (:func:`correspondences` without the round trip, which changes only
    points within a pixel of an occluding edge), so with ``stride = 1`` this is the share of valid pixels of
    ``visloc.data.scene.flow.flow``. The pixels are those of :func:`grid_points` with ``stride``; the denominator
    counts every grid pixel, sky included, so a view half filled by sky overlaps at most 0.5. Not symmetric: see
    :func:`pair_overlap`.
    """
    uv0 = grid_points(view0.size, stride)
    _, valid = correspondences(uv0, view0, view1, rel_tol=rel_tol, cycle_px=None)
    return float(valid.mean())


def pair_overlap(view0: View, view1: View, *, stride: int = 4,
                 rel_tol: float = REL_TOL) -> tuple[float, float, float]:
    """``(overlap_0to1, overlap_1to0, overlap)`` of a pair; ``overlap = min`` of the two directed ratios.

    The symmetric score is the minimum, so a pair of overlap ``o`` shows at least ``o`` of each image in the
    other (D2-Net's sparse MegaDepth score, shared 3D points over the smaller point count, is closer to the
    maximum; glue-factory tests ``max(overlap_0to1, overlap_1to0)`` against its minimum).
    """
    o01 = overlap_ratio(view0, view1, stride=stride, rel_tol=rel_tol)
    o10 = overlap_ratio(view1, view0, stride=stride, rel_tol=rel_tol)
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
        proj0: float64 ``[N0, 2]``: ``kp0`` projected into image 1 (NaN where undefined).
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


def _behind(kp: np.ndarray, view: View, other: View) -> np.ndarray:
    """Bool ``[N]``: the surface point seen at each keypoint's nearest pixel is behind the other camera."""
    W, H = view.size
    x = np.clip(np.rint(np.nan_to_num(kp[:, 0])), 0, W - 1).astype(np.int64)
    y = np.clip(np.rint(np.nan_to_num(kp[:, 1])), 0, H - 1).astype(np.int64)
    z = np.asarray(view.depth, np.float64)[y, x]
    z = np.where(np.isfinite(z) & (z > 0), z, 0.0)
    rays = np.concatenate([kp, np.ones((len(kp), 1))], 1) @ np.linalg.inv(view.K).T
    world = (rays * z[:, None] - view.pose.t) @ view.pose.R
    return (z > 0) & (other.pose.transform(world)[:, 2] <= 0)


def _near_surface(view: View, kp: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: a surface pixel within one pixel (3 x 3) of the nearest pixel of each keypoint."""
    W, H = view.size
    d = np.asarray(view.depth)
    grown = cv2.dilate((np.isfinite(d) & (d > 0)).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    u = np.clip(np.rint(np.nan_to_num(kp[:, 0])), 0, W - 1).astype(np.int64)
    v = np.clip(np.rint(np.nan_to_num(kp[:, 1])), 0, H - 1).astype(np.int64)
    return grown[v, u]


def _labels(kp: np.ndarray, proj: np.ndarray, cov: np.ndarray, dist: np.ndarray, view: View, other: View,
            neg_th: float) -> np.ndarray:
    """-1 / -2 labels of one side before the positives are set (see :func:`gt_matches`)."""
    defined = np.isfinite(proj).all(1)
    unmatched = (defined & (~cov | (dist > neg_th))) | _behind(kp, view, other) | ~_near_surface(view, kp)
    return np.where(unmatched, UNMATCHED, IGNORE).astype(np.int32)


def gt_matches(kp0: np.ndarray, kp1: np.ndarray, view0: View, view1: View, *, pos_th: float = 3.0,
               neg_th: float = 5.0, rel_tol: float = REL_TOL) -> GtMatches:
    """Ground-truth assignment of two keypoint sets through depth and poses (as glue-factory's / LoFTR's).

    ``kp0[i]`` and ``kp1[j]`` match when both are co-visible, ``j`` is the keypoint of image 1 nearest to the
    projection of ``i``, ``i`` the keypoint of image 0 nearest to the projection of ``j`` (mutual nearest), and
    both reprojection distances are below ``pos_th`` pixels. A keypoint with no match is :data:`UNMATCHED` when
    it is sure to have none: its point is not co-visible (outside image 1, occluded, behind camera 1), or it is
    co-visible with no keypoint of the other image within ``neg_th`` pixels of its projection, or it is on the sky
    with no surface within one pixel; every other keypoint is :data:`IGNORE` (between the thresholds, or on a
    plane edge where its depth is ambiguous). For LoFTR-style coarse supervision pass :func:`grid_points` of the
    coarse cells as ``kp0`` / ``kp1`` with ``pos_th = stride / 2``.

    Args:
        kp0: ``[N0, 2]`` keypoints of image 0 (pixels, centre at 0).
        kp1: ``[N1, 2]`` keypoints of image 1.
        view0: image 0 (its labels make sub-pixel depth exact).
        view1: image 1.
        pos_th: largest reprojection distance of a match (pixels).
        neg_th: smallest distance to every keypoint of a co-visible unmatched keypoint (pixels, >= pos_th).
        rel_tol: relative depth tolerance of the occlusion check.
    """
    if not 0 < pos_th <= neg_th:
        raise ValueError(f"gt_matches: need 0 < pos_th <= neg_th, got {pos_th}, {neg_th}")
    kp0, kp1 = np.asarray(kp0, np.float64).reshape(-1, 2), np.asarray(kp1, np.float64).reshape(-1, 2)
    proj0, cov0 = correspondences(kp0, view0, view1, rel_tol=rel_tol)
    proj1, cov1 = correspondences(kp1, view1, view0, rel_tol=rel_tol)
    j0, d0 = _nearest(proj0, kp1)
    i1, d1 = _nearest(proj1, kp0)
    m0 = _labels(kp0, proj0, cov0, d0, view0, view1, neg_th)
    m1 = _labels(kp1, proj1, cov1, d1, view1, view0, neg_th)
    idx0 = np.flatnonzero(cov0 & (d0 < pos_th))
    j = j0[idx0]
    mutual = cov1[j] & (d1[j] < pos_th) & (i1[j] == idx0)
    idx0, j = idx0[mutual], j[mutual]
    m0[idx0] = j
    m1[j] = idx0
    return GtMatches(m0, m1, proj0, proj1, cov0, cov1)


__all__ = [
    "CYCLE_PX", "IGNORE", "REL_TOL", "UNMATCHED", "GtMatches", "View", "baseline_m", "correspondences", "grid_points",
    "gt_matches", "overlap_ratio", "pair_overlap", "rotation_angle_deg",
]
