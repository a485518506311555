"""Pinhole rendering of textured planes with a z-buffer, exact depth, plane and place ids, and point projection.

Camera convention: OpenCV axes (x right, y down, z forward), pose ``cam_from_world`` (``x_cam = R @ x_world
+ t``), intrinsics ``K`` with the centre of the top-left pixel at ``(0, 0)``; any image size.

The planes that may be seen are chosen first for the whole world at once (:mod:`visloc.data.scene.cull`:
near, far and frustum tests on corners precomputed once per world), nearest first, then drawn into a z-buffer
(:mod:`visloc.data.scene.draw`: texture warps, exact inverse depth, near and far planes, equal depths resolved
by world order so that the drawing order never changes a pixel).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from visloc.data.scene.cull import PlaneTable, PlaneWorld, Visible, cull, far_default, plane_table
from visloc.data.scene.draw import Buffers, View, clip_polygon, draw_plane, prepare, raster, texel_to_world
from visloc.io.poses import CameraPose

__all__ = ["Frame", "clip_polygon", "intrinsics", "project", "render", "sky", "unproject"]

#: sky colour at the top and at the bottom of the image (RGB, uint8)
_SKY_TOP = np.array([120, 160, 215], np.float32)
_SKY_BOTTOM = np.array([200, 215, 235], np.float32)


@dataclass(frozen=True, eq=False)
class Frame:
    """A rendered view.

    Attributes:
        image: uint8 RGB ``[H, W, 3]`` (:attr:`image_float` gives float32 in [0, 1]).
        depth: float32 ``[H, W]``: z of the surface in the camera frame (metres, along the optical axis, not
            the ray length); ``inf`` where the ray sees the sky (no plane, or beyond the far plane).
        plane_index: int32 ``[H, W]``: index into ``world.planes`` of the visible plane, -1 for the sky.
        place_id: int32 ``[H, W]``: ``place_id`` of the visible plane (``world.planes[i].place_id``), -1 for
            the sky (and for planes that belong to no place).
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
    """

    image: np.ndarray
    depth: np.ndarray
    plane_index: np.ndarray
    place_id: np.ndarray
    K: np.ndarray
    pose: CameraPose

    @property
    def image_float(self) -> np.ndarray:
        """float32 RGB ``[H, W, 3]`` in [0, 1]."""
        return self.image.astype(np.float32) / 255.0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]


def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    """[3, 3] pinhole ``K`` with ``fx = fy = focal`` and the principal point at the image centre.

    The centre is ``((width - 1) / 2, (height - 1) / 2)`` in the pixel-centre-at-0 convention.
    """
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, K: np.ndarray, pose: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into an image.

    Args:
        points: [N, 3] world points (metres).
        K: [3, 3] intrinsics.
        pose: ``cam_from_world``.

    Returns:
        ``uv [N, 2]`` pixel coordinates (pixel centre at 0; meaningless where ``z <= 0``) and ``z [N]``,
        the depth along the optical axis.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"project: points must be [N, 3], got {pts.shape}")
    cam = pose.transform(pts)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, dtype=np.float64).T)[:, :2] / z[:, None]
    return uv, z


def unproject(depth: np.ndarray, K: np.ndarray, pose: CameraPose, uv: np.ndarray) -> np.ndarray:
    """World points ``[N, 3]`` of pixels ``uv [N, 2]`` (integers, pixel centre at 0) with their depth map values."""
    uv = np.asarray(uv)
    z = depth[uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(np.float64)
    rays = np.concatenate([uv.astype(np.float64), np.ones((len(uv), 1))], 1) @ np.linalg.inv(K).T
    return (rays * z[:, None] - pose.t) @ pose.R


@functools.lru_cache(maxsize=8)
def _sky(size: tuple[int, int]) -> np.ndarray:
    W, H = size
    a = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
    rows = (_SKY_TOP * (1 - a) + _SKY_BOTTOM * a).astype(np.uint8)
    out = np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (H, W, 3)))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def _sky4(size: tuple[int, int]) -> np.ndarray:
    out = cv2.cvtColor(_sky(size), cv2.COLOR_RGB2RGBA)
    out.flags.writeable = False
    return out


def sky(size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` vertical sky gradient for ``size`` = (width, height) (a fresh array)."""
    return _sky((int(size[0]), int(size[1]))).copy()


def _resolve(world: PlaneWorld, K: np.ndarray, size: tuple[int, int] | None, near: float | None,
             far: float | None) -> tuple[np.ndarray, tuple[int, int], float, float]:
    """Checked ``K``, ``(W, H)``, ``near`` and ``far`` (``inf`` when neither the call nor the conf gives one)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"render: K must be [3, 3], got {K.shape}")
    W, H = (int(size[0]), int(size[1])) if size is not None else (world.conf.width, world.conf.height)
    if W < 1 or H < 1:
        raise ValueError(f"render: size must be positive, got {(W, H)}")
    near = float(world.conf.near_m if near is None else near)
    if not near > 0:
        raise ValueError(f"render: near must be > 0, got {near}")
    far = far_default(world) if far is None else float(far)
    if not far > near:
        raise ValueError(f"render: far must be > near ({near}), got {far}")
    return K, (W, H), near, far


def render(world: PlaneWorld, K: np.ndarray, pose: CameraPose, size: tuple[int, int] | None = None,
           near: float | None = None, far: float | None = None, *, culling: bool = True) -> Frame:
    """Render ``world`` seen by a pinhole camera.

    Args:
        world: the planes (a ``World``, a ``City``, anything with ``conf`` and ``planes``).
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
        size: (width, height) in pixels; default: the world conf's ``width`` and ``height``.
        near: near clipping distance in metres; default: the world conf's ``near_m``.
        far: far clipping distance in metres (z-depth: surfaces with ``z > far`` are sky); default: the world
            conf's ``far_m`` when it has one, else none.
        culling: cull the world's planes first (:mod:`visloc.data.scene.cull`) and skip hidden planes; off,
            every plane is drawn in world order. The frame is the same either way (culling only saves time).

    Returns:
        The frame: image, depth (``inf`` for the sky), visible plane index and place id.
    """
    K, (W, H), near, far = _resolve(world, K, size, near, far)
    table = plane_table(world)
    view = View(K, np.linalg.inv(K), pose, near, far, skip_hidden=culling)
    buffers = Buffers(_sky4((W, H)).copy(), np.zeros((H, W), np.float32), np.full((H, W), -1, np.int32),
                      np.empty((H, W), np.int32))
    if culling:
        _draw_visible(world, table, cull(table, K, pose, (W, H), near, far), view, buffers)
    else:
        index = np.arange(len(world.planes))
        for i, A in zip(index.tolist(), texel_to_world(table, world.planes, index)[0], strict=True):
            draw_plane(world.planes[i], A, i, view, buffers)
    with np.errstate(divide="ignore"):
        depth = np.float32(1.0) / buffers.inv_depth
    place_id = table.place_id[buffers.ids + 1]
    image = cv2.cvtColor(buffers.image, cv2.COLOR_RGBA2RGB)
    return Frame(image, depth, buffers.ids, place_id, K, pose)


def _draw_visible(world: PlaneWorld, table: PlaneTable, visible: Visible, view: View, buffers: Buffers) -> None:
    """Draw the planes kept by the cull, nearest first; those that need no clipping from stacked geometry."""
    planes, index = world.planes, visible.index
    A, sizes = texel_to_world(table, planes, index)
    batch = prepare(A, sizes, view, (buffers.ids.shape[1], buffers.ids.shape[0]))
    inv_depth, K_inv_T = buffers.inv_depth, view.K_inv.T
    for k, (i, (x0, y0, x1, y1), bound) in enumerate(zip(index.tolist(), visible.box.tolist(),
                                                          visible.bound.tolist(), strict=True)):
        if not batch.simple[k]:
            if float(inv_depth[y0:y1 + 1, x0:x1 + 1].min()) <= bound:  # else hidden: nothing would be written
                draw_plane(planes[i], A[k], i, view, buffers)
            continue
        bx0, by0, rw, rh = batch.box[k]
        lo, hi, top = batch.bounds[k]
        if rw == 0 or float(inv_depth[by0:by0 + rh, bx0:bx0 + rw].min()) > top:
            continue  # no pixel, or hidden behind what is drawn
        normal = batch.normal[k]
        offset = float(normal @ batch.M2[k])  # exactly as draw_plane: the plane is normal . X = offset
        if abs(offset) < 1e-9 * math.sqrt(float(normal @ normal)):
            continue  # seen edge-on
        raster(planes[i], i, (bx0, by0, rw, rh), (K_inv_T @ normal) / offset, (lo, hi, top), batch.ratio[k],
               batch.B[k], view, buffers)
