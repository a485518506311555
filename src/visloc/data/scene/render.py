"""Pinhole rendering of textured planes with a z-buffer, exact depth, plane and place ids, and point projection.

Camera convention: OpenCV axes (x right, y down, z forward), pose ``cam_from_world`` (``x_cam = R @ x_world
+ t``), intrinsics ``K`` with the centre of the top-left pixel at ``(0, 0)``; any image size.

The planes that may be seen are chosen first for the whole world at once (:mod:`visloc.data.scene.cull`:
near, far and frustum tests on corners precomputed once per world), nearest first. Each is then drawn in the
bounding box of its image: its texture (the mip level closest to one texel per pixel) is warped with
``cv2.warpPerspective`` through the texel-to-pixel homography, its inverse depth is affine in pixel coordinates
(``1/z = g . (x, y, 1)``), and pixels whose centre maps inside the texture, with ``near <= z <= far`` and nearer
than the z-buffer are written (equal depths: the plane listed first in the world wins, so the drawing order
never changes a pixel). A plane whose nearest possible depth over its box is behind everything already drawn
there is skipped before its warp. The region drawn is the bounding box of the texture rectangle clipped against
the near plane (in texel coordinates, where ``z`` is affine) and then against the image, so planes that are
partly behind the camera render correctly.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from visloc.data.scene.cull import F32_SLACK, PlaneTable, PlaneWorld, cull, far_default, plane_table
from visloc.data.scene.world import Plane
from visloc.io.poses import CameraPose

#: sky colour at the top and at the bottom of the image (RGB, uint8)
_SKY_TOP = np.array([120, 160, 215], np.float32)
_SKY_BOTTOM = np.array([200, 215, 235], np.float32)
_LITTLE_ENDIAN = sys.byteorder == "little"


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


@dataclass(frozen=True)
class _View:
    """What every plane of one render shares."""

    K: np.ndarray
    K_inv: np.ndarray
    pose: CameraPose
    near: float
    far: float
    skip_hidden: bool  # test each plane against the z-buffer before its warp


@dataclass(frozen=True)
class _Buffers:
    image: np.ndarray  # uint8 RGBA [H, W, 4] (alpha unused)
    inv_depth: np.ndarray  # float32 [H, W], 0 = sky
    ids: np.ndarray  # int32 [H, W], -1 = sky
    scratch: np.ndarray  # int32 [H, W], filled with a plane's index before copying it into ids

    @classmethod
    def start(cls, size: tuple[int, int]) -> _Buffers:
        W, H = size
        return cls(_sky4(size).copy(), np.zeros((H, W), np.float32), np.full((H, W), -1, np.int32),
                   np.empty((H, W), np.int32))


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


def clip_polygon(poly: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Sutherland-Hodgman: keep the part of convex ``poly [N, 2]`` where ``a * x + b * y + c >= 0``."""
    if len(poly) == 0:
        return poly
    d = poly @ np.array([a, b]) + c
    if (d >= 0).all():
        return np.array(poly, dtype=np.float64).reshape(-1, 2)
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if d[i] >= 0:
            out.append(poly[i])
        if (d[i] >= 0) != (d[j] >= 0):
            out.append(poly[i] + (poly[j] - poly[i]) * (d[i] / (d[i] - d[j])))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(x @ np.concatenate((y[1:], y[:1])) - y @ np.concatenate((x[1:], x[:1]))))


def _outline(plane: Plane, M: np.ndarray, K: np.ndarray, near: float,
             size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Visible outline of ``plane`` in texel coordinates and in pixels (both [N, 2]), or None if not in view."""
    w, h = plane.texture_size  # known without making a lazy texture
    poly = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    poly = clip_polygon(poly, M[2, 0], M[2, 1], M[2, 2] - near)  # z(s, t) = M[2] . (s, t, 1) >= near
    if len(poly) < 3:
        return None
    cam = np.concatenate([poly, np.ones((len(poly), 1))], 1) @ M.T
    pix = (cam @ K.T)[:, :2] / cam[:, 2:]
    W, H = size
    bounds = ((1, 0, 1.0), (-1, 0, W), (0, 1, 1.0), (0, -1, H))  # image bounds with a 1 px margin
    if (pix @ np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]) + np.array([1.0, W, 1.0, H]) < 0).any():
        for a, b, c in bounds:
            pix = clip_polygon(pix, a, b, c)
    if len(pix) < 3:
        return None
    return poly, pix


def _warp_texture(plane: Plane, K: np.ndarray, M: np.ndarray, tex_poly: np.ndarray, pix: np.ndarray,
                  roi: tuple[int, int, int, int]) -> np.ndarray:
    """RGBA ``[h, w, 4]`` of ``plane`` over ``roi`` = (x0, y0, w, h), from the mip level nearest 1 texel/pixel.

    Alpha is 0 where the pixel centre maps outside the texture (zero border), 255 inside.
    """
    x0, y0, rw, rh = roi
    ratio = _area(tex_poly) / max(_area(pix), 1e-6)  # level-0 texels per pixel (area)
    level = int(np.clip(np.floor(0.5 * np.log2(max(ratio, 1e-12))), 0, len(plane.mips) - 1))
    tex = plane.mips[level]
    h0, w0 = plane.mips[0].shape[:2]
    sx, sy = tex.shape[1] / w0, tex.shape[0] / h0
    level_from_base = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    roi_from_image = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]])
    H = roi_from_image @ K @ M @ np.linalg.inv(level_from_base)
    return cv2.warpPerspective(tex, H, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(0, 0, 0, 0))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` of two 3-vectors (the same floating-point operations, without its overhead)."""
    a0, a1, a2 = float(a[0]), float(a[1]), float(a[2])
    b0, b1, b2 = float(b[0]), float(b[1]), float(b[2])
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def _texel_to_world(table: PlaneTable, plane: Plane, index: int) -> np.ndarray:
    """``plane.texel_to_world``, computed once per plane of a world (it reads the texture's size)."""
    A = table.cache.get(("A", index))
    if A is None:
        A = table.cache[("A", index)] = plane.texel_to_world
    return A


def _draw_plane(plane: Plane, A: np.ndarray, index: int, view: _View, buffers: _Buffers) -> None:
    """Z-test and write one plane (``A`` = its ``texel_to_world``) into ``buffers``."""
    H, W = buffers.inv_depth.shape
    M = view.pose.R @ A
    M[:, 2] += view.pose.t  # texel (s, t, 1) -> camera frame
    normal = _cross(M[:, 0], M[:, 1])
    offset = float(normal @ M[:, 2])  # the plane in the camera frame: normal . X = offset
    if abs(offset) < 1e-9 * math.sqrt(float(normal @ normal)):
        return  # seen edge-on
    outline = _outline(plane, M, view.K, view.near, (W, H))
    if outline is None:
        return
    tex_poly, pix = outline
    x0, y0 = max(0, math.floor(pix[:, 0].min())), max(0, math.floor(pix[:, 1].min()))
    x1, y1 = min(W - 1, math.ceil(pix[:, 0].max())), min(H - 1, math.ceil(pix[:, 1].max()))
    if x1 < x0 or y1 < y0:
        return
    if x1 == x0 and y1 == y0:  # cv2 takes a 1 x 1 array for a scalar (compare() then fails): one more column
        x0, x1 = (x0, x1 + 1) if x1 + 1 < W else (x0 - 1, x1)
    roi = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    g = (view.K_inv.T @ normal) / offset  # 1/z = g . (x, y, 1); negative behind the camera
    inv_roi = buffers.inv_depth[y0:y1 + 1, x0:x1 + 1]
    lo, hi = _inv_range(g, roi)
    near32, far32 = np.float32(1.0 / view.near), np.float32(1.0 / view.far)
    if view.skip_hidden and float(inv_roi.min()) > min(hi, _outline_bound(g, pix, (W, H)), float(near32)):
        return  # behind everything already drawn over its whole box
    warped = _warp_texture(plane, view.K, M, tex_poly, pix, roi)
    xs = np.arange(x0, x1 + 1, dtype=np.float32)
    ys = np.arange(y0, y1 + 1, dtype=np.float32)
    inv = (np.float32(g[0]) * xs)[None, :] + (np.float32(g[1]) * ys + np.float32(g[2]))[:, None]
    write = _z_test(inv, inv_roi, buffers.ids[y0:y1 + 1, x0:x1 + 1], index)
    cv2.bitwise_and(write, _inside(warped), dst=write)
    if hi >= near32:  # some pixel may be nearer than the near plane
        cv2.bitwise_and(write, _compare(inv, float(near32), cv2.CMP_LE), dst=write)
    if lo <= far32:  # some pixel may be beyond the far plane
        cv2.bitwise_and(write, _compare(inv, float(far32), cv2.CMP_GE), dst=write)
    _write(buffers, roi, write, inv, warped, index)


def _slack(g: np.ndarray, size: tuple[int, int]) -> float:
    """Bound on the float32 rounding error of ``g . (x, y, 1)`` for pixels of an image of ``size``."""
    return F32_SLACK * (abs(float(g[0])) * size[0] + abs(float(g[1])) * size[1] + abs(float(g[2])))


def _inv_range(g: np.ndarray, roi: tuple[int, int, int, int]) -> tuple[float, float]:
    """Bounds on the float32 inverse depths ``g . (x, y, 1)`` computed over ``roi`` (affine: extremes at corners).

    Widened by the float32 rounding, so that a test skipped on these bounds never differs from the test done
    pixel by pixel.
    """
    x0, y0, rw, rh = roi
    g0, g1, g2 = float(g[0]), float(g[1]), float(g[2])
    values = [g0 * x + g1 * y + g2 for x in (x0, x0 + rw - 1) for y in (y0, y0 + rh - 1)]
    slack = _slack(g, (x0 + rw, y0 + rh))
    return min(values) - slack, max(values) + slack


def _outline_bound(g: np.ndarray, pix: np.ndarray, size: tuple[int, int]) -> float:
    """Upper bound on ``1/z`` at pixels a plane can write: within a pixel of its outline ``pix`` [N, 2]."""
    top = float((pix @ g[:2]).max()) + float(g[2]) + abs(float(g[0])) + abs(float(g[1]))
    return top + _slack(g, size)


def _compare(a: np.ndarray, value: float, op: int) -> np.ndarray:
    """uint8 mask (255 = true) of ``a <op> value`` for a scalar ``value`` (converted to ``a``'s type by cv2)."""
    return cv2.compare(a, value, op)  # pyright: ignore[reportArgumentType, reportCallIssue]  # stubs: no scalar


def _z_test(inv: np.ndarray, inv_roi: np.ndarray, ids_roi: np.ndarray, index: int) -> np.ndarray:
    """uint8 mask (255 = pass): nearer than the z-buffer, or as near and listed earlier in the world."""
    nearer = cv2.compare(inv, inv_roi, cv2.CMP_GT)
    tie = cv2.compare(inv, inv_roi, cv2.CMP_EQ)
    if cv2.countNonZero(tie):
        cv2.bitwise_and(tie, _compare(ids_roi, index, cv2.CMP_GT), dst=tie)
        cv2.bitwise_or(nearer, tie, dst=nearer)
    return nearer


def _inside(warped: np.ndarray) -> np.ndarray:
    """uint8 mask (255 = inside the texture): alpha >= 128 of the warped RGBA ``[h, w, 4]``."""
    if _LITTLE_ENDIAN:  # alpha is the top byte of each pixel read as an int32: alpha >= 128 <=> negative
        return _compare(warped.view(np.int32)[..., 0], 0, cv2.CMP_LT)
    return _compare(cv2.extractChannel(warped, 3), 128, cv2.CMP_GE)


def _write(buffers: _Buffers, roi: tuple[int, int, int, int], write: np.ndarray, inv: np.ndarray,
           warped: np.ndarray, index: int) -> None:
    """Copy the plane's inverse depth, colour and index into the buffers where ``write`` (uint8 mask) is set."""
    x0, y0, rw, rh = roi
    rows, cols = slice(y0, y0 + rh), slice(x0, x0 + rw)
    cv2.copyTo(inv, write, buffers.inv_depth[rows, cols])
    cv2.copyTo(warped, write, buffers.image[rows, cols])
    fill = buffers.scratch[:rh, :rw]
    fill.fill(index)
    cv2.copyTo(fill, write, buffers.ids[rows, cols])


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
    view = _View(K, np.linalg.inv(K), pose, near, far, skip_hidden=culling)
    buffers = _Buffers.start((W, H))
    planes = world.planes
    if culling:
        visible = cull(table, K, pose, (W, H), near, far)
        inv_depth = buffers.inv_depth
        for i, (x0, y0, x1, y1), bound in zip(visible.index.tolist(), visible.box.tolist(),
                                              visible.bound.tolist(), strict=True):
            if float(inv_depth[y0:y1 + 1, x0:x1 + 1].min()) > bound:
                continue  # hidden behind what is drawn: nothing of it would be written
            _draw_plane(planes[i], _texel_to_world(table, planes[i], i), i, view, buffers)
    else:
        for i, plane in enumerate(planes):
            _draw_plane(plane, _texel_to_world(table, plane, i), i, view, buffers)
    with np.errstate(divide="ignore"):
        depth = np.float32(1.0) / buffers.inv_depth
    place_id = table.place_id[buffers.ids + 1]
    image = cv2.cvtColor(buffers.image, cv2.COLOR_RGBA2RGB)
    return Frame(image, depth, buffers.ids, place_id, K, pose)
