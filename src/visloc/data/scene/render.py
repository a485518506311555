"""Pinhole rendering of textured planes with a z-buffer, exact depth, and point projection.

Camera convention: OpenCV axes (x right, y down, z forward), pose ``cam_from_world`` (``x_cam = R @ x_world
+ t``), intrinsics ``K`` with the centre of the top-left pixel at ``(0, 0)``.

Each plane is drawn in the bounding box of its image: its texture (the mip level closest to one texel per
pixel) is warped with ``cv2.warpPerspective`` through the texel-to-pixel homography, its inverse depth is
affine in pixel coordinates (``1/z = g . (x, y, 1)``), and pixels whose centre maps inside the texture, in
front of the near plane (``0 < z``, ``z >= near``) and nearer than the z-buffer are written. The region drawn
is the bounding box of the texture rectangle clipped against the near plane (in texel coordinates, where ``z``
is affine) and then against the image, so planes that are partly behind the camera render correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from visloc.data.scene.world import Plane, World
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City

#: sky colour at the top and at the bottom of the image (RGB, uint8)
_SKY_TOP = np.array([120, 160, 215], np.float32)
_SKY_BOTTOM = np.array([200, 215, 235], np.float32)


@dataclass(frozen=True, eq=False)
class Frame:
    """A rendered view.

    Attributes:
        image: uint8 RGB ``[H, W, 3]`` (:attr:`image_float` gives float32 in [0, 1]).
        depth: float32 ``[H, W]``: z of the surface in the camera frame (metres, along the optical axis, not
            the ray length); ``inf`` where the ray sees the sky (no plane).
        plane_index: int16 ``[H, W]``: index into ``world.planes`` of the visible plane, -1 for the sky.
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
    """

    image: np.ndarray
    depth: np.ndarray
    plane_index: np.ndarray
    K: np.ndarray
    pose: CameraPose

    @property
    def image_float(self) -> np.ndarray:
        """float32 RGB ``[H, W, 3]`` in [0, 1]."""
        return self.image.astype(np.float32) / 255.0


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
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


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
    for a, b, c in ((1, 0, 1.0), (-1, 0, W), (0, 1, 1.0), (0, -1, H)):  # image bounds with a 1 px margin
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


def _draw_plane(plane: Plane, index: int, K: np.ndarray, pose: CameraPose, near: float,
                buffers: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Z-test and write one plane into ``buffers`` = (image uint8, inverse depth float32, plane index int16)."""
    image, inv_depth, ids = buffers
    H, W = inv_depth.shape
    M = pose.R @ plane.texel_to_world
    M[:, 2] += pose.t  # texel (s, t, 1) -> camera frame
    normal = np.cross(M[:, 0], M[:, 1])
    offset = float(normal @ M[:, 2])  # the plane in the camera frame: normal . X = offset
    if abs(offset) < 1e-9 * np.linalg.norm(normal):
        return  # seen edge-on
    outline = _outline(plane, M, K, near, (W, H))
    if outline is None:
        return
    tex_poly, pix = outline
    x0, y0 = max(0, int(np.floor(pix[:, 0].min()))), max(0, int(np.floor(pix[:, 1].min())))
    x1, y1 = min(W - 1, int(np.ceil(pix[:, 0].max()))), min(H - 1, int(np.ceil(pix[:, 1].max())))
    if x1 < x0 or y1 < y0:
        return
    warped = _warp_texture(plane, K, M, tex_poly, pix, (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
    g = (np.linalg.inv(K).T @ normal) / offset  # 1/z = g . (x, y, 1); negative behind the camera
    xs = np.arange(x0, x1 + 1, dtype=np.float32)
    ys = np.arange(y0, y1 + 1, dtype=np.float32)
    inv = (np.float32(g[0]) * xs)[None, :] + (np.float32(g[1]) * ys + np.float32(g[2]))[:, None]
    inv_roi = inv_depth[y0:y1 + 1, x0:x1 + 1]
    write = (warped[..., 3] >= 128) & (inv > inv_roi) & (inv <= np.float32(1.0 / near))
    np.copyto(inv_roi, inv, where=write)
    np.copyto(image[y0:y1 + 1, x0:x1 + 1], warped[..., :3], where=write[..., None])
    ids[y0:y1 + 1, x0:x1 + 1][write] = index


def sky(size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` vertical sky gradient for ``size`` = (width, height)."""
    W, H = size
    a = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
    rows = (_SKY_TOP * (1 - a) + _SKY_BOTTOM * a).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (H, W, 3)))


def render(world: World | City, K: np.ndarray, pose: CameraPose, size: tuple[int, int] | None = None,
           near: float | None = None) -> Frame:
    """Render ``world`` seen by a pinhole camera.

    Args:
        world: the planes.
        K: [3, 3] intrinsics (OpenCV, pixel centre at 0).
        pose: ``cam_from_world``.
        size: (width, height) in pixels; default: the world conf's.
        near: near clipping distance in metres; default: the world conf's ``near_m``.

    Returns:
        The frame: image, depth (``inf`` for the sky), visible plane index.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"render: K must be [3, 3], got {K.shape}")
    W, H = size if size is not None else (world.conf.width, world.conf.height)
    if W < 1 or H < 1:
        raise ValueError(f"render: size must be positive, got {(W, H)}")
    near = world.conf.near_m if near is None else near
    if near <= 0:
        raise ValueError(f"render: near must be > 0, got {near}")
    image = sky((W, H))
    inv_depth = np.zeros((H, W), np.float32)
    ids = np.full((H, W), -1, np.int16)
    for i, plane in enumerate(world.planes):
        _draw_plane(plane, i, K, pose, near, (image, inv_depth, ids))
    with np.errstate(divide="ignore"):
        depth = np.float32(1.0) / inv_depth
    return Frame(image, depth, ids, K, pose)
