"""World-level culling for the renderer: per-world plane geometry, computed once, and a vectorised per-view test.

A plane is culled when no point of its rectangle can be drawn: every corner is beyond the far plane
(``z > far``), behind the near plane (``z < near``), or outside one side of the view frustum (the image bounds
widened by the renderer's 1 px margin), or, for a plane wholly in front of the near plane, when its projected
bounding box holds no pixel centre. Each test is one half-space that holds the whole visible part of the view
(or, for the last, a box that holds every pixel the plane could write), and a convex rectangle misses a
half-space only if all its corners do, so culling never changes a rendered pixel: it only saves the work of
drawing planes that would write nothing. A first pass tests each plane's bounding sphere (cheap, on centres),
the corner tests run on what it keeps.

For each kept plane the cull also gives a pixel box that holds every pixel the plane can write and an upper
bound of the inverse depth ``1/z`` it can write there: the renderer skips a plane at once when the z-buffer
over that box is already nearer than the bound everywhere.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from visloc.data.scene.world import Plane
from visloc.io.poses import CameraPose

#: relative slack of the near / far tests, so that float rounding never culls a plane the drawing would keep
_SLACK = 1e-6
#: relative rounding of float32 ``1/z = g0 x + g1 y + g2``, times the sum of the terms' sizes: its error bound
F32_SLACK = 1e-6
#: pixels of slack of the sub-pixel test: a pixel centre within this of a plane's box may still be written
_SUBPIXEL_MARGIN = 0.05


class PlaneWorld(Protocol):
    """What the renderer reads of a world: ``World``, ``City``, or anything with these attributes."""

    @property
    def conf(self) -> Any:  # noqa: ANN401  # SceneConf, CityConf...: width, height, near_m, maybe far_m
        """The world's conf: ``width``, ``height`` and ``near_m`` are read, ``far_m`` when it has one."""
        ...

    @property
    def planes(self) -> tuple[Plane, ...]:
        """The textured rectangles."""
        ...


@dataclass(frozen=True, eq=False)
class PlaneTable:
    """The planes of a world as arrays (built once per world by :func:`plane_table`).

    Built from ``origin``, ``u``, ``v`` and ``size_m`` only, so a city's lazy textures stay unmade until a
    plane is drawn.

    Attributes:
        corners: float64 ``[4, P, 3]`` world corners of each rectangle (metres), corner first: ``origin``,
            ``+ w u``, ``+ w u + h v``, ``+ h v`` with ``(w, h) = size_m``.
        centers: float64 ``[P, 3]`` world centres of the rectangles.
        radii: float64 ``[P]`` half diagonals (the bounding spheres' radii, metres).
        normals: float64 ``[P, 3]`` unit normals ``u x v`` (world frame).
        place_id: int32 ``[P + 1]`` lookup: ``place_id[i + 1]`` is ``planes[i].place_id``, ``place_id[0] = -1``
            (so ``place_id[plane_index + 1]`` maps a plane-index image, sky -1 included, to place ids).
        cache: per-plane values the renderer computes on first draw (texel-to-world matrices).
    """

    corners: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    normals: np.ndarray
    place_id: np.ndarray
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Visible:
    """The planes kept by :func:`cull`, nearest first.

    Attributes:
        index: int64 ``[M]`` plane indices, sorted by the depth of their nearest corner (clamped at ``near``),
            ties in world order.
        box: int64 ``[M, 4]`` ``(x0, y0, x1, y1)``, inclusive pixel bounds inside the image, holding every
            pixel each plane can write.
        bound: float64 ``[M]`` upper bound of the ``1/z`` each plane can write in its box (``1/near`` at most).
    """

    index: np.ndarray
    box: np.ndarray
    bound: np.ndarray


_TABLES: weakref.WeakKeyDictionary[Any, PlaneTable] = weakref.WeakKeyDictionary()


def plane_table(world: PlaneWorld) -> PlaneTable:
    """The :class:`PlaneTable` of ``world``, cached while the world lives (keyed on the object, not its value).

    A world that takes no weak reference (a ``SimpleNamespace``...) gets a fresh table on every call.
    """
    try:
        table = _TABLES.get(world)
    except TypeError:  # not weak-referenceable
        return _build_table(world.planes)
    if table is None or len(table.radii) != len(world.planes):
        table = _TABLES[world] = _build_table(world.planes)
    return table


def _build_table(planes: tuple[Plane, ...]) -> PlaneTable:
    """Corners, spheres, normals and place ids of ``planes``."""
    origin = np.array([p.origin for p in planes], np.float64).reshape(-1, 3)
    du = np.array([p.size_m[0] * p.u for p in planes], np.float64).reshape(-1, 3)
    dv = np.array([p.size_m[1] * p.v for p in planes], np.float64).reshape(-1, 3)
    corners = np.stack([origin, origin + du, origin + du + dv, origin + dv])
    normals = np.cross(du, dv)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    place_id = np.array([-1] + [p.place_id for p in planes], np.int32)
    return PlaneTable(corners, origin + 0.5 * (du + dv), 0.5 * np.linalg.norm(du + dv, axis=1), normals,
                      place_id)


def _frustum(K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[4, 3] normals (camera frame) of the side planes through the camera centre: ``n . X >= 0`` inside.

    ``u >= -1``, ``u <= W``, ``v >= -1``, ``v <= H``: the image with the renderer's 1 px margin.
    """
    W, H = size
    return np.stack([K[0] + K[2], W * K[2] - K[0], K[1] + K[2], H * K[2] - K[1]])


def _sphere_keep(table: PlaneTable, pose: CameraPose, sides: np.ndarray, near: float, far: float) -> np.ndarray:
    """Indices of the planes whose bounding sphere is not wholly outside the near, far or a side plane."""
    c = table.centers @ pose.R.T + pose.t
    r = table.radii * (1 + _SLACK) + 1e-9
    keep = (c[:, 2] + r >= near) & (c[:, 2] - r <= far)
    unit = sides / np.linalg.norm(sides, axis=1, keepdims=True)
    keep &= ((c @ unit.T) >= -r[:, None]).all(1)
    return np.flatnonzero(keep)


def cull(table: PlaneTable, K: np.ndarray, pose: CameraPose, size: tuple[int, int], near: float,
         far: float) -> Visible:
    """The planes that may be visible, nearest first, with their pixel boxes and ``1/z`` bounds.

    Args:
        table: the world's planes (:func:`plane_table`).
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
        size: (width, height) in pixels.
        near: near plane distance (metres, > 0).
        far: far plane distance (metres, > near; ``inf`` for none).
    """
    W, H = size
    sides = _frustum(K, size)
    index = _sphere_keep(table, pose, sides, near, far)
    cam = table.corners[:, index] @ pose.R.T + pose.t  # [4, M, 3] camera frame
    z = cam[..., 2]
    zmin = corner_min(z)
    keep = (corner_max(z) >= near * (1 - _SLACK)) & (zmin <= far * (1 + _SLACK))
    keep &= (corner_max(cam @ sides.T) >= 0).all(1)
    front = zmin >= near
    pix = cam @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[..., :2] / pix[..., 2:]  # [4, M, 2], meaningful where front
    lo, hi = corner_min(uv), corner_max(uv)
    holds = (np.ceil(lo - _SUBPIXEL_MARGIN) <= np.floor(hi + _SUBPIXEL_MARGIN)).all(1)  # a pixel centre inside
    keep &= ~front | holds
    order = np.flatnonzero(keep)
    order = order[np.argsort(np.maximum(zmin[order], near), kind="stable")]
    index, origin, zmin, front, lo, hi = index[order], cam[0, order], zmin[order], front[order], lo[order], hi[order]
    box = np.empty((len(index), 4), np.int64)
    box[:] = (0, 0, W - 1, H - 1)
    near32 = float(np.float32(1.0 / near))  # pixels are written where float32 1/z <= this
    bound = np.full(len(index), near32)
    if front.any():
        inner = np.concatenate([np.floor(lo[front]) - 1, np.ceil(hi[front]) + 1], axis=1)
        box[front] = np.clip(inner, 0, [W - 1, H - 1, W - 1, H - 1]).astype(np.int64)
        # 1/z is affine in pixels, g . (x, y, 1) with g = K^-T n / (n . X) for the plane n . X = n . X_0
        n = table.normals[index[front]] @ pose.R.T
        offset = (n * origin[front]).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.abs(n @ np.linalg.inv(K) / offset[:, None])
            slope = g[:, 0] + g[:, 1]  # one pixel's worth, for pixels just outside the outline
            slack = F32_SLACK * (g[:, 0] * W + g[:, 1] * H + g[:, 2])
            bound[front] = np.fmin(1.0 / zmin[front] + slope + slack, near32)  # fmin: NaN (edge-on) -> near32
    return Visible(index, box, bound)


def corner_min(a: np.ndarray) -> np.ndarray:
    """Minimum over the 4 corners (axis 0) of ``a [4, ...]``, by elementwise minima (faster than a reduction)."""
    return np.minimum(np.minimum(a[0], a[1]), np.minimum(a[2], a[3]))


def corner_max(a: np.ndarray) -> np.ndarray:
    """Maximum over the 4 corners (axis 0) of ``a [4, ...]``."""
    return np.maximum(np.maximum(a[0], a[1]), np.maximum(a[2], a[3]))


def far_default(world: PlaneWorld) -> float:
    """The world conf's ``far_m`` when it has one, else ``inf`` (no far plane)."""
    far = getattr(world.conf, "far_m", None)
    return math.inf if far is None else float(far)
