"""Exact pixel correspondences between two views of a rendered world: through depth and poses, occlusion-checked.

The ground truth of dense and sparse matchers and of optical flow. A pixel ``uv0`` of image 0 (pixel centre at
0) with depth ``z0`` (z-depth, metres) is the camera-0 point ``X0 = z0 K0^-1 (u, v, 1)``; it is carried to
camera 1 by the poses (``cam_from_world``: ``X1 = R1 R0^T (X0 - t0) + t1``) and projected with ``K1``.

Sampling (``depth0`` at ``uv0``, ``depth1`` around ``uv1``): the depth of the nearest pixel, which for pixel
centres (integer ``uv``, as in :func:`flow`) is the pixel's own depth, exact. With surface labels
(``labels0`` / ``labels1``, e.g. ``Frame.plane_index``) a sub-pixel position is exact too: the nearest pixel's
inverse depth is moved to it along its plane's inverse depth gradient (``1/z`` is affine in pixels on a plane),
a finite difference with the next or previous pixel of the same label; a position whose surrounding pixels
(floor and ceil in x and y) do not all share one label is on an edge, its surface ambiguous, and so invalid.

Occlusion: where ``depth1`` is given, the point is visible in image 1 when its inverse depth ``1 / z1`` agrees,
to ``rel_tol`` relative, with that of one of the four pixels around ``uv1`` (each moved to ``uv1`` along its
plane with ``labels1``; without labels their bilinear interpolation is tried too). Else it is occluded: another
surface is nearer. Any of the four, so that points at a silhouette (against the sky or a farther surface) stay
visible; within a pixel of an occluding edge the answer is the pixel-level one. The depth maps are float32,
exact to about ``1e-6`` relative on planes, so ``rel_tol`` (default 1 %) only has to absorb creases and, without
labels, the nearest-pixel sampling of surfaces seen at grazing angles. Points are inside image 1 within its
pixel centres: ``0 <= u <= W1 - 1``, ``0 <= v <= H1 - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visloc.data.scene.render import Frame
from visloc.io.poses import CameraPose

#: default relative depth tolerance of the occlusion test
REL_TOL = 0.01


@dataclass(frozen=True)
class FlowField:
    """Optical flow from frame 0 to frame 1.

    Attributes:
        flow: float32 ``[H0, W0, 2]``: ``uv1 - uv0`` (pixels, x then y) wherever the surface point of the pixel
            is in front of camera 1, even outside image 1 or occluded there; 0 for the sky and for points behind
            camera 1.
        valid: bool ``[H0, W0]``: the point is seen in image 1: in front of camera 1, inside image 1 (within the
            pixel centres, ``0 <= u <= W1 - 1``, ``0 <= v <= H1 - 1``) and not occluded.
        occluded: bool ``[H0, W0]``: in front of camera 1 and inside image 1, but hidden by another surface
            (depth test failed).
    """

    flow: np.ndarray
    valid: np.ndarray
    occluded: np.ndarray


@dataclass(frozen=True)
class _Mapped:
    uv1: np.ndarray  # [N, 2] float64, NaN where undefined
    defined: np.ndarray  # finite depth0, in front of camera 1
    inside: np.ndarray  # defined and inside image 1 (all True without an image size)
    visible: np.ndarray  # inside and depth test passed (equals inside without depth1)


def _check_K(K: np.ndarray, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"map_pixels: {name} must be [3, 3], got {K.shape}")
    return K


def _lookup(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image[y, x]`` for integer pixel arrays ``x``, ``y`` [N], and where they lie inside (else index 0)."""
    H, W = image.shape[:2]
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    return image[np.where(inside, y, 0), np.where(inside, x, 0)], inside


def _gradient(inv: np.ndarray, labels: np.ndarray, axis: int) -> np.ndarray:
    """Per-pixel difference of ``inv`` along ``axis`` with the next pixel of the same label, else the previous."""
    ahead = np.zeros_like(inv)
    same = np.zeros(inv.shape, bool)
    lead = [slice(None), slice(None)]
    lag = [slice(None), slice(None)]
    lead[axis], lag[axis] = slice(1, None), slice(None, -1)
    lead_, lag_ = tuple(lead), tuple(lag)
    same[lag_] = (labels[lead_] == labels[lag_]) & (inv[lead_] > 0) & (inv[lag_] > 0)
    ahead[lag_] = np.where(same[lag_], inv[lead_] - inv[lag_], 0.0)  # forward difference, at the lower pixel
    behind = np.zeros_like(inv)
    same_behind = np.zeros(inv.shape, bool)
    same_behind[lead_] = same[lag_]
    behind[lead_] = ahead[lag_]  # backward difference, at the upper pixel
    return np.where(same, ahead, np.where(same_behind, behind, 0.0))


@dataclass(frozen=True)
class _Surface:
    """Inverse depth of an image (0: no surface) and, with labels, its gradient along each plane (per pixel)."""

    inv: np.ndarray  # float64 [H, W]
    gx: np.ndarray | None  # float64 [H, W], d(1/z)/dx on the pixel's plane
    gy: np.ndarray | None

    @classmethod
    def of(cls, depth: np.ndarray, labels: np.ndarray | None) -> _Surface:
        d = np.asarray(depth, dtype=np.float64)
        good = np.isfinite(d) & (d > 0)
        inv = np.where(good, 1.0 / np.where(good, d, 1.0), 0.0)
        if labels is None:
            return cls(inv, None, None)
        return cls(inv, _gradient(inv, labels, 1), _gradient(inv, labels, 0))

    def at(self, x: np.ndarray, y: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Inverse depth at ``uv`` [N, 2] of the surface seen at the integer pixels ``(x, y)`` [N] (0: none).

        Without labels: the pixel's own ``1 / depth``; with them, moved to ``uv`` along the pixel's plane.
        """
        inv, inside = _lookup(self.inv, x, y)
        inv = np.where(inside, inv, 0.0)
        if self.gx is None or self.gy is None:
            return inv
        gx, gy = _lookup(self.gx, x, y)[0], _lookup(self.gy, x, y)[0]
        return np.where(inv > 0, inv + gx * (uv[:, 0] - x) + gy * (uv[:, 1] - y), 0.0)


def _one_label(labels: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Whether the pixels around ``uv`` [N, 2] (floor and ceil in x and y: 1, 2 or 4 of them) share a label."""
    finite = np.all(np.isfinite(uv), axis=1, keepdims=False).reshape(-1)
    uv = np.where(finite[:, None], uv, 0.0)
    lo, hi = np.floor(uv).astype(np.int64), np.ceil(uv).astype(np.int64)
    first, _ = _lookup(labels, lo[:, 0], lo[:, 1])
    same = finite.copy()
    for x, y in ((hi[:, 0], lo[:, 1]), (lo[:, 0], hi[:, 1]), (hi[:, 0], hi[:, 1])):
        same &= _lookup(labels, x, y)[0] == first
    return same


def _nearest_pixel(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer x, y [N] of the pixels nearest to ``uv`` [N, 2] (finite ``uv`` only; others get -1)."""
    finite = np.all(np.isfinite(uv), axis=1, keepdims=False).reshape(-1)
    r = np.rint(np.where(finite[:, None], uv, -1.0)).astype(np.int64)
    return r[:, 0], r[:, 1]


def _visible(surface1: _Surface, uv1: np.ndarray, z1: np.ndarray, inside: np.ndarray, rel_tol: float) -> np.ndarray:
    """Depth test: ``1 / z1`` agrees with the inverse depth of one of the four pixels around ``uv1``.

    Each pixel's value is moved to ``uv1`` along its plane (with labels); without labels the bilinear
    interpolation of the four values is tried too (exact on a plane seen by all four).
    """
    uv = np.where(inside[:, None], uv1, 0.0)
    x0, y0 = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    target = np.where(inside, 1.0 / np.where(inside, z1, 1.0), 0.0)
    ok = np.zeros(len(uv), bool)
    corners = [(x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)), (x0, y0 + 1, (1 - fx) * fy),
               (x0 + 1, y0 + 1, fx * fy)]
    blend, all_there = np.zeros(len(uv)), np.ones(len(uv), bool)
    for x, y, w in corners:
        inv = surface1.at(x, y, uv)
        ok |= np.abs(inv - target) <= rel_tol * target
        blend += w * inv
        all_there &= inv > 0
    if surface1.gx is None:
        ok |= all_there & (np.abs(blend - target) <= rel_tol * target)
    return ok & inside


def _map(uv0: np.ndarray, depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose, K1: np.ndarray,
         pose1: CameraPose, depth1: np.ndarray | None, size1: tuple[int, int] | None, rel_tol: float,
         labels0: np.ndarray | None, labels1: np.ndarray | None) -> _Mapped:
    uv0 = np.asarray(uv0, dtype=np.float64)
    depth0 = np.asarray(depth0)
    if uv0.ndim != 2 or uv0.shape[1] != 2:
        raise ValueError(f"map_pixels: uv0 must be [N, 2], got {uv0.shape}")
    if depth0.ndim != 2:
        raise ValueError(f"map_pixels: depth0 must be [H0, W0], got {depth0.shape}")
    if labels0 is not None and np.shape(labels0) != depth0.shape:
        raise ValueError(f"map_pixels: labels0 must be {depth0.shape} like depth0, got {np.shape(labels0)}")
    if depth1 is not None and np.ndim(depth1) != 2:
        raise ValueError(f"map_pixels: depth1 must be [H1, W1], got {np.shape(depth1)}")
    if labels1 is not None and (depth1 is None or np.shape(labels1) != np.shape(depth1)):
        expected = None if depth1 is None else np.shape(depth1)
        raise ValueError(f"map_pixels: labels1 must be {expected} like depth1, got {np.shape(labels1)}")
    if not rel_tol > 0:
        raise ValueError(f"map_pixels: rel_tol must be > 0, got {rel_tol}")
    K0, K1 = _check_K(K0, "K0"), _check_K(K1, "K1")
    if size1 is None and depth1 is not None:
        size1 = (depth1.shape[1], depth1.shape[0])
    px, py = _nearest_pixel(uv0)
    inv0 = _Surface.of(depth0, labels0).at(px, py, uv0)
    finite = inv0 > 0
    if labels0 is not None:
        finite &= _one_label(labels0, uv0)
    z0 = 1.0 / np.where(finite, inv0, 1.0)
    rays = np.concatenate([uv0, np.ones((len(uv0), 1))], 1) @ np.linalg.inv(K0).T
    X0 = rays * np.where(finite, z0, 1.0)[:, None]
    R = pose1.R @ pose0.R.T
    X1 = X0 @ R.T + (pose1.t - R @ pose0.t)
    z1 = X1[:, 2]
    defined = finite & (z1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv1 = (X1 @ K1.T)[:, :2] / z1[:, None]
    uv1[~defined] = np.nan
    inside = defined.copy()
    if size1 is not None:
        W1, H1 = size1
        with np.errstate(invalid="ignore"):
            inside &= (uv1[:, 0] >= 0) & (uv1[:, 0] <= W1 - 1) & (uv1[:, 1] >= 0) & (uv1[:, 1] <= H1 - 1)
    visible = inside if depth1 is None else _visible(_Surface.of(depth1, labels1), uv1, z1, inside, rel_tol)
    return _Mapped(uv1, defined, inside, visible)


def map_pixels(uv0: np.ndarray, depth0: np.ndarray, K0: np.ndarray, pose0: CameraPose, K1: np.ndarray,
               pose1: CameraPose, depth1: np.ndarray | None = None, size1: tuple[int, int] | None = None, *,
               rel_tol: float = REL_TOL, labels0: np.ndarray | None = None,
               labels1: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map pixels of image 0 to image 1 through depth and poses (see the module docstring for the sampling).

    Args:
        uv0: [N, 2] pixel coordinates in image 0 (x, y; pixel centre at 0).
        depth0: float ``[H0, W0]`` z-depth of image 0 (metres; ``inf``, 0 or NaN: no surface, the sky).
        K0: [3, 3] intrinsics of camera 0.
        pose0: ``cam_from_world`` of camera 0.
        K1: [3, 3] intrinsics of camera 1.
        pose1: ``cam_from_world`` of camera 1.
        depth1: float ``[H1, W1]`` z-depth of image 1, for the occlusion test; None: no test.
        size1: (width, height) of image 1; default: ``depth1``'s; with neither, no image bounds are checked.
        rel_tol: relative depth tolerance of the occlusion test (> 0).
        labels0: int ``[H0, W0]`` surface labels of image 0 (``Frame.plane_index``): the depth of a sub-pixel
            ``uv0`` is then exact on a plane (the nearest pixel's, moved along its plane), and ``uv0`` whose
            surrounding pixels carry different labels (edges) are invalid.
        labels1: int ``[H1, W1]`` surface labels of image 1, the same for the occlusion test (needs ``depth1``).

    Returns:
        ``uv1`` float64 ``[N, 2]`` (NaN where the point is undefined: sky, outside image 0, behind camera 1) and
        ``valid`` bool ``[N]``: defined, inside image 1 (``0 <= u <= W1 - 1``, ``0 <= v <= H1 - 1``) and not
        occluded.
    """
    mapped = _map(uv0, depth0, K0, pose0, K1, pose1, depth1, size1, rel_tol, labels0, labels1)
    return mapped.uv1, mapped.visible


def flow(frame0: Frame, frame1: Frame, *, rel_tol: float = REL_TOL) -> FlowField:
    """Exact optical flow from ``frame0`` to ``frame1`` (every pixel centre of frame 0), occlusions flagged."""
    W0, H0 = frame0.size
    ys, xs = np.mgrid[0:H0, 0:W0]
    uv0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    mapped = _map(uv0, frame0.depth, frame0.K, frame0.pose, frame1.K, frame1.pose, frame1.depth, frame1.size,
                  rel_tol, None, frame1.plane_index)  # pixel centres: their own depth, no labels needed
    field = np.where(mapped.defined[:, None], mapped.uv1 - uv0, 0.0).astype(np.float32).reshape(H0, W0, 2)
    occluded = (mapped.inside & ~mapped.visible).reshape(H0, W0)
    return FlowField(field, mapped.visible.reshape(H0, W0), occluded)
