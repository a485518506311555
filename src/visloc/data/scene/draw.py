"""Drawing planes into a z-buffer: the per-plane steps of :func:`visloc.data.scene.render.render`.

Each plane is drawn in the bounding box of its image: its texture (the mip level closest to one texel per pixel)
is warped with ``cv2.warpPerspective`` through the texel-to-pixel homography, its inverse depth is affine in pixel
coordinates (``1/z = g . (x, y, 1)``), and pixels whose centre maps inside the texture, with ``near <= z <= far``
and nearer than the z-buffer are written (equal depths: the plane listed first in the world wins, so the drawing
order never changes a pixel). A plane whose nearest possible depth over its box is behind everything already
drawn there is skipped before its warp. The box is that of the texture rectangle clipped against the near plane
(in texel coordinates, where ``z`` is affine) and then against the image (with a 1 px margin), so planes partly
behind the camera render correctly.

Planes that need no clipping (wholly in front of the near plane and inside the image margin, most of a view) get
their geometry for the whole view at once (:func:`prepare`, stacked numpy); the others one by one
(:func:`draw_plane`). Both compute every value that reaches a pixel with the same floating-point operations.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from visloc.data.scene.cull import F32_SLACK, PlaneTable, corner_max, corner_min
from visloc.data.scene.world import Plane
from visloc.io.poses import CameraPose

_LITTLE_ENDIAN = sys.byteorder == "little"
#: boxes of at most this many pixels take the numpy path (cv2 reads a 1x1 array as a scalar)
_TINY = 4
#: the image bounds with the 1 px margin, as (a, b) of ``a . (x, y)`` and the offsets (c, times W or H)
_BOUNDS_AB = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])


@dataclass(frozen=True)
class View:
    """What every plane of one render shares."""

    K: np.ndarray
    K_inv: np.ndarray
    pose: CameraPose
    near: float
    far: float
    skip_hidden: bool  # test each plane against the z-buffer before its warp

    @property
    def near32(self) -> float:
        """The largest ``1/z`` written (float32, as the per-pixel test)."""
        return float(np.float32(1.0 / self.near))

    @property
    def far32(self) -> float:
        """The smallest ``1/z`` written (float32, as the per-pixel test; 0 without a far plane)."""
        return float(np.float32(1.0 / self.far))


@dataclass(frozen=True)
class Buffers:
    """The z-buffer of one render: colour, inverse depth, plane index, and scratch for plane indices."""

    image: np.ndarray  # uint8 RGBA [H, W, 4] (alpha unused)
    inv_depth: np.ndarray  # float32 [H, W], 0 = sky
    ids: np.ndarray  # int32 [H, W], -1 = sky
    scratch: np.ndarray  # int32 [H, W], filled with a plane's index before copying it into ids


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


def _texel_rect(w: int, h: int) -> np.ndarray:
    """[4, 2] corners of a ``w x h`` texture in texel coordinates (pixel centre at 0)."""
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def _outline(plane: Plane, M: np.ndarray, K: np.ndarray, near: float,
             size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Visible outline of ``plane`` in texel coordinates and in pixels (both [N, 2]), or None if not in view."""
    poly = _texel_rect(*plane.texture_size)  # known without making a lazy texture
    poly = clip_polygon(poly, M[2, 0], M[2, 1], M[2, 2] - near)  # z(s, t) = M[2] . (s, t, 1) >= near
    if len(poly) < 3:
        return None
    cam = np.concatenate([poly, np.ones((len(poly), 1))], 1) @ M.T
    pix = (cam @ K.T)[:, :2] / cam[:, 2:]
    W, H = size
    if (pix @ _BOUNDS_AB + np.array([1.0, W, 1.0, H]) < 0).any():
        for a, b, c in ((1, 0, 1.0), (-1, 0, W), (0, 1, 1.0), (0, -1, H)):  # image bounds, 1 px margin
            pix = clip_polygon(pix, a, b, c)
    if len(pix) < 3:
        return None
    return poly, pix


@functools.lru_cache(maxsize=4096)
def _level_inverse(base: tuple[int, int], level: tuple[int, int]) -> np.ndarray:
    """Inverse of the affine map from level-0 texel coordinates to those of a mip level (shapes ``(w, h)``)."""
    sx, sy = level[0] / base[0], level[1] / base[1]
    level_from_base = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    out = np.linalg.inv(level_from_base)
    out.flags.writeable = False
    return out


def _warp_texture(plane: Plane, B: np.ndarray, ratio: float, roi: tuple[int, int, int, int]) -> np.ndarray:
    """RGBA ``[h, w, 4]`` of ``plane`` over ``roi`` = (x0, y0, w, h), from the mip level nearest 1 texel/pixel.

    ``B`` is the map from level-0 texels to roi pixels, ``ratio`` the level-0 texels per pixel (area). Alpha is 0
    where the pixel centre maps outside the texture (zero border), 255 inside.
    """
    mips = plane.mips  # a city plane makes (or fetches) its pyramid here, once per draw
    level = min(max(math.floor(0.5 * float(np.log2(max(ratio, 1e-12)))), 0), len(mips) - 1)
    tex = mips[level]
    h0, w0 = mips[0].shape[:2]
    H = B @ _level_inverse((w0, h0), (tex.shape[1], tex.shape[0]))
    return cv2.warpPerspective(tex, H, (roi[2], roi[3]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(0, 0, 0, 0))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` of two 3-vectors (the same floating-point operations, without its overhead)."""
    a0, a1, a2 = float(a[0]), float(a[1]), float(a[2])
    b0, b1, b2 = float(b[0]), float(b[1]), float(b[2])
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def _roi_from_image(x0: int, y0: int) -> np.ndarray:
    return np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]])


def draw_plane(plane: Plane, A: np.ndarray, index: int, view: View, buffers: Buffers) -> None:
    """Z-test and write one plane (``A`` = its ``texel_to_world``) into ``buffers``, clipping as needed."""
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
    roi = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    g = (view.K_inv.T @ normal) / offset  # 1/z = g . (x, y, 1); negative behind the camera
    lo, hi = _inv_range(g, roi)
    bound = min(hi, _outline_bound(g, pix, (W, H)), view.near32)
    ratio = _area(tex_poly) / max(_area(pix), 1e-6)  # level-0 texels per pixel (area)
    B = _roi_from_image(x0, y0) @ view.K @ M
    raster(plane, index, roi, g, (lo, hi, bound), ratio, B, view, buffers)


def raster(plane: Plane, index: int, roi: tuple[int, int, int, int], g: np.ndarray,
           bounds: tuple[float, float, float], ratio: float, B: np.ndarray, view: View, buffers: Buffers) -> None:
    """Warp, z-test and write a plane over ``roi`` = (x0, y0, w, h).

    Args:
        plane: the plane.
        index: its index in the world.
        roi: the box drawn, inside the image.
        g: ``1/z = g . (x, y, 1)`` in image pixels.
        bounds: (lowest, highest) ``1/z`` over the box and the highest the plane can write (all widened by float32
            rounding); the plane is skipped when the z-buffer is nearer than the last over the whole box.
        ratio: level-0 texels per pixel (area), for the mip level.
        B: [3, 3] map from level-0 texel coordinates to roi pixels.
        view: the render's camera and options.
        buffers: the z-buffer.
    """
    x0, y0, rw, rh = roi
    rows, cols = slice(y0, y0 + rh), slice(x0, x0 + rw)
    inv_roi = buffers.inv_depth[rows, cols]
    lo, hi, bound = bounds
    if view.skip_hidden and float(inv_roi.min()) > bound:
        return  # behind everything already drawn over its whole box
    warped = _warp_texture(plane, B, ratio, roi)
    xs = np.arange(x0, x0 + rw, dtype=np.float32)
    ys = np.arange(y0, y0 + rh, dtype=np.float32)
    inv = (np.float32(g[0]) * xs)[None, :] + (np.float32(g[1]) * ys + np.float32(g[2]))[:, None]
    ids_roi = buffers.ids[rows, cols]
    near32, far32 = view.near32, view.far32
    if inv.size <= _TINY:
        write = _tiny_mask(inv, inv_roi, ids_roi, index, warped, (near32, far32))
    else:
        write = _z_test(inv, inv_roi, ids_roi, index)
        cv2.bitwise_and(write, _inside(warped), dst=write)
        if hi >= near32:  # some pixel may be nearer than the near plane
            cv2.bitwise_and(write, _compare(inv, near32, cv2.CMP_LE), dst=write)
        if lo <= far32:  # some pixel may be beyond the far plane
            cv2.bitwise_and(write, _compare(inv, far32, cv2.CMP_GE), dst=write)
    cv2.copyTo(inv, write, inv_roi)
    cv2.copyTo(warped, write, buffers.image[rows, cols])
    fill = buffers.scratch[:rh, :rw]
    fill.fill(index)
    cv2.copyTo(fill, write, ids_roi)


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


def _tiny_mask(inv: np.ndarray, inv_roi: np.ndarray, ids_roi: np.ndarray, index: int, warped: np.ndarray,
               limits: tuple[float, float]) -> np.ndarray:
    """The write mask of :func:`raster` for a box of a few pixels, in numpy.

    cv2 takes a 1x1 array for a scalar, so its ``array op scalar`` calls are ambiguous there.
    """
    near32, far32 = np.float32(limits[0]), np.float32(limits[1])
    nearer = (inv > inv_roi) | ((inv == inv_roi) & (ids_roi > index))
    write = nearer & (warped[..., 3] >= 128) & (inv <= near32) & (inv >= far32)
    return write.astype(np.uint8) * np.uint8(255)


def texel_to_world(table: PlaneTable, planes: tuple[Plane, ...], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 3, 3]`` ``plane.texel_to_world`` and int ``[N, 2]`` ``plane.texture_size`` of ``planes[index]``.

    Each computed once per world (cached in the table).
    """
    cache = table.cache
    if "A" not in cache:
        cache["A"] = np.zeros((len(planes), 3, 3))
        cache["texture_size"] = np.zeros((len(planes), 2), np.int64)
        cache["A_known"] = np.zeros(len(planes), bool)
    A, sizes, known = cache["A"], cache["texture_size"], cache["A_known"]
    for i in index[~known[index]].tolist():
        A[i] = planes[i].texel_to_world
        sizes[i] = planes[i].texture_size
        known[i] = True
    return A[index], sizes[index]


@dataclass(frozen=True)
class Prepared:
    """Geometry of a view's planes that need no clipping, computed for all of them at once (:func:`prepare`).

    Per plane ``k`` of the batch: ``simple[k]`` (no clipping needed; else draw with :func:`draw_plane`),
    ``box[k]`` = (x0, y0, w, h) (``w == 0``: no pixel), ``ratio[k]``, ``bounds[k]`` (lowest, highest and highest
    writable ``1/z``) and ``B[k]`` as :func:`raster` takes them, ``normal[k]`` and ``M2[k]`` (the plane's normal
    and texel origin in the camera frame, for its exact ``g``).
    """

    simple: list[bool]
    box: list[list[int]]
    ratio: list[float]
    bounds: list[list[float]]
    B: np.ndarray
    normal: np.ndarray
    M2: np.ndarray


def prepare(A: np.ndarray, texture_size: np.ndarray, view: View, size: tuple[int, int]) -> Prepared:
    """Outline, box, mip ratio, ``1/z`` bounds and texel-to-box map of planes, stacked (see :class:`Prepared`).

    Args:
        A: ``[N, 3, 3]`` texel-to-world maps of the planes.
        texture_size: int ``[N, 2]`` level-0 texture (width, height).
        view: the camera.
        size: (W, H) of the image.

    A plane is simple when its four corners are in front of the near plane (with a relative margin, so that the
    one-by-one test agrees) and inside the image's 1 px margin (the same test as the one-by-one path). For those,
    every value computed here is what :func:`draw_plane` computes (stacked matrix products are the same products).
    """
    W, H = size
    N = len(A)
    M = view.pose.R @ A  # [N, 3, 3]
    M[:, :, 2] += view.pose.t
    w, h = texture_size[:, 0].astype(np.float64), texture_size[:, 1].astype(np.float64)
    poly = np.ones((N, 4, 3))
    poly[:, :, :2] = -0.5
    poly[:, 1:3, 0] = (w - 0.5)[:, None]
    poly[:, 2:4, 1] = (h - 0.5)[:, None]
    cam = poly @ np.swapaxes(M, 1, 2)  # [N, 4, 3]: the corners in the camera frame
    z = cam[:, :, 2].T  # [4, N]
    front = corner_min(z) - view.near > 1e-9 * (corner_max(np.abs(z)) + view.near)
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = (cam @ view.K.T)[:, :, :2] / cam[:, :, 2:]
        inside = (pix @ _BOUNDS_AB + np.array([1.0, W, 1.0, H]) >= 0).all((1, 2))
    simple = front & inside
    x, y = pix[:, :, 0].T, pix[:, :, 1].T  # [4, N]
    x0, y0 = np.maximum(0.0, np.floor(corner_min(x))), np.maximum(0.0, np.floor(corner_min(y)))
    x1, y1 = np.minimum(W - 1.0, np.ceil(corner_max(x))), np.minimum(H - 1.0, np.ceil(corner_max(y)))
    nonempty = simple & (x1 >= x0) & (y1 >= y0)
    xr, yr = np.roll(pix[:, :, 0], -1, axis=1), np.roll(pix[:, :, 1], -1, axis=1)
    area = 0.5 * np.abs((pix[:, :, 0] * yr).sum(1) - (pix[:, :, 1] * xr).sum(1))
    ratio = (w * h) / np.maximum(area, 1e-6)
    x0, y0 = np.where(nonempty, x0, 0.0), np.where(nonempty, y0, 0.0)
    rw, rh = np.where(nonempty, x1 - x0 + 1, 0.0), np.where(nonempty, y1 - y0 + 1, 0.0)
    T = np.zeros((N, 3, 3))
    T[:, 0, 0] = T[:, 1, 1] = T[:, 2, 2] = 1.0
    T[:, 0, 2], T[:, 1, 2] = -x0, -y0
    B = (T @ view.K) @ M
    a, b = M[:, :, 0], M[:, :, 1]
    normal = np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                       a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], 1)
    M2 = np.ascontiguousarray(M[:, :, 2])
    bounds = _bounds(normal, M2, (x, y), (x0, y0, x0 + rw - 1, y0 + rh - 1), view)
    box = np.stack([x0, y0, rw, rh], 1).astype(np.int64).tolist()
    return Prepared(simple.tolist(), box, ratio.tolist(), bounds, B, normal, M2)


def _bounds(normal: np.ndarray, origin: np.ndarray, pix: tuple[np.ndarray, np.ndarray], box: tuple[np.ndarray, ...],
            view: View) -> list[list[float]]:
    """(lowest, highest, highest writable) ``1/z`` of each plane over its box, widened as in :func:`draw_plane`.

    ``pix`` is the outline's (x, y), each ``[4, N]``.
    """
    x0, y0, x1, y1 = box
    offset = (normal * origin).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = normal @ view.K_inv / offset[:, None]  # [N, 3]; only for bounds, widened below
        g0, g1, g2 = g[:, 0], g[:, 1], g[:, 2]
        corners = np.stack([g0 * x0 + g1 * y0, g0 * x1 + g1 * y0, g0 * x0 + g1 * y1, g0 * x1 + g1 * y1]) + g2
        slack = 2 * F32_SLACK * (np.abs(g0) * (x1 + 1) + np.abs(g1) * (y1 + 1) + np.abs(g2))
        lo, hi = corner_min(corners) - slack, corner_max(corners) + slack
        top = corner_max(g0 * pix[0] + g1 * pix[1]) + g2 + np.abs(g0) + np.abs(g1) + slack
        bound = np.fmin(np.fmin(hi, top), view.near32)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))  # edge-on: never skip on bounds
    out = np.stack([np.where(bad, -np.inf, lo), np.where(bad, np.inf, hi), np.where(bad, np.inf, bound)], 1)
    return out.tolist()
