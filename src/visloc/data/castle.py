"""ViSP's simulated "Castle" RGB-D sequence with ground-truth poses and metric depth.

Debian package ``visp-images-data``, folder ``mbt-depth/Castle-simu``: 40 grayscale 640x480 images
``Images/Image_%04d.pgm``, depth maps ``Depth/Depth_%04d.bin``, poses ``CameraPose/Camera_%03d.txt``
and intrinsics ``Config/chateau.xml`` (image camera), ``Config/chateau_depth.xml`` (depth camera).

Conventions, as ViSP's ``testGenericTrackerDepth.cpp`` reads the data and as measured here:

- **Index k** of the three folders is the same instant (``Image_0007``, ``Depth_0007``, ``Camera_007``);
  poses shifted by one frame raised the median depth error of 5-frame pairs from 0.12 to 3.3 mm.
- **Poses** are ViSP's ``cMo`` = ``cam_from_world`` of the *image* camera: ``x_cam = R x_world + t``.
  The inverse reading gave a 23 mm median depth error and a 79/255 photometric error.
- **Depth** is ``uint32`` height, ``uint32`` width (little-endian), then ``uint16`` values, row-major;
  metres = value * 0.000030518 (ViSP's ``depth_scale``, ~1/32768), 0 = background. It is the
  z-coordinate (not the range along the ray) in a **separate depth camera** shifted by 5 cm:
  ``x_depth = x_cam + (-0.05, 0, 0)`` (ViSP's ``depth_M_color``), same intrinsics. The depth map is
  therefore *not* pixel-aligned with the image; ``registered_depth`` re-renders it into the image.
- **Pixels**: integer ``(u, v)`` are pixel centres (OpenCV, and ViSP's ``vpPixelMeterConversion``),
  ``u0, v0`` in the same convention (a half-pixel shift changed errors by < 0.003 mm: untestable).

Measured over all pairs ``(i, i + step)`` (``reprojection_check``, stride 4), for step 1 / 5 / 10:
median depth error 0.12 / 0.12 / 0.14 mm (max over pairs 0.21 / 0.16 / 0.18 mm; depth quantum is
0.03 mm); fraction within 1 cm >= 0.985 / 0.945 / 0.91 (min over pairs; the rest are occlusions);
mean absolute photometric error 1.9 / 3.5 / 6.1 out of 255 (max 4.2 / 6.6 / 9.1; shading differs
between views). Warping image j into image i with ``registered_depth`` (bilinear) gives the lowest
photometric error at zero shift (+-0.25 px grid) on 8 pairs 5-10 frames apart, and pyramidal
Lucas-Kanade tracks of corners between consecutive frames have a median ``depth_match_error`` of
0.14 px (max over pairs 0.28 px). Without the 5 cm depth-camera offset the step-5 median depth error
was 6.4 mm; reading depth as range, 2.0 mm; with the depth scaled by 1 +- 1%, 0.58 mm.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visloc.data.errors import DatasetError
from visloc.geometry.transforms import relative_pose as _relative_pose
from visloc.io.images import read_image
from visloc.utils.checks import matched_keypoints

CASTLE_ROOT = Path("/usr/share/visp-images-data/ViSP-images/mbt-depth/Castle-simu")
DEPTH_SCALE = 0.000030518  # metres per depth unit, ViSP's depth_scale
DEPTH_FROM_CAM_T = np.array([-0.05, 0.0, 0.0])  # x_depth = x_cam + DEPTH_FROM_CAM_T (no rotation)
CRACK_GAP = 0.01  # metres: a one-pixel hole between depths closer than this is filled


@dataclass(frozen=True)
class CastleFrame:
    """One frame; ``R [3, 3]``, ``t [3]``: image camera ``cam_from_world``, ``x_cam = R @ x_world + t``.

    ``K [3, 3]`` is the image camera's intrinsics, ``K_depth [3, 3]`` the depth camera's.
    """

    name: str
    image_path: Path
    depth_path: Path
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    K_depth: np.ndarray


def load_intrinsics(xml_path: str | Path) -> np.ndarray:
    """``K [3, 3]`` float64 from the ``<camera>`` ``px, py, u0, v0`` of a ViSP tracker XML."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
        vals = [float(root.findtext(f"camera/{k}", "")) for k in ("px", "py", "u0", "v0")]
    except (OSError, ET.ParseError, ValueError) as e:
        raise DatasetError(f"{xml_path}: no <camera> px, py, u0, v0 ({type(e).__name__})") from None
    px, py, u0, v0 = vals
    return np.array([[px, 0.0, u0], [0.0, py, v0], [0.0, 0.0, 1.0]])


def read_depth(path: str | Path) -> np.ndarray:
    """Depth map ``[H, W]`` float32 in metres (z in the depth camera), 0 where invalid."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read depth file ({e.strerror})") from None
    if len(data) < 8:
        raise DatasetError(f"{path}: depth file too short for its header ({len(data)} bytes)")
    h, w = (int(x) for x in np.frombuffer(data[:8], "<u4"))
    if h == 0 or w == 0 or len(data) != 8 + 2 * h * w:
        raise DatasetError(f"{path}: depth header says {h}x{w} uint16, expected {8 + 2 * h * w} bytes, "
                           f"file has {len(data)}")
    return (np.frombuffer(data[8:], "<u2").reshape(h, w) * np.float32(DEPTH_SCALE)).astype(np.float32)


def read_pose(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(R [3, 3], t [3])`` float64, ``cam_from_world``, from a 4x4 text matrix (ViSP ``cMo``)."""
    path = Path(path)
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable pose ({str(e).splitlines()[0][:60]})") from None
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise DatasetError(f"{path}: expected a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1]) or not np.allclose(R.T @ R, np.eye(3), atol=1e-5):
        raise DatasetError(f"{path}: not a rigid transform (R not orthonormal or last row not 0 0 0 1)")
    return R.copy(), T[:3, 3].copy()


def load_castle(root: str | Path = CASTLE_ROOT) -> list[CastleFrame]:
    """All frames sorted by index; raises ``DatasetError`` if the folder or a file is missing."""
    root = Path(root)
    if not (root / "Images").is_dir():
        raise DatasetError(f"{root}: ViSP Castle-simu not found; install Debian package visp-images-data")
    K = load_intrinsics(root / "Config" / "chateau.xml")
    K_depth = load_intrinsics(root / "Config" / "chateau_depth.xml")
    frames = []
    for image_path in sorted((root / "Images").glob("Image_[0-9][0-9][0-9][0-9].pgm")):
        k = int(image_path.stem[len("Image_"):])
        depth_path = root / "Depth" / f"Depth_{k:04d}.bin"
        if not depth_path.is_file():
            raise DatasetError(f"{depth_path}: missing depth for {image_path.name}")
        R, t = read_pose(root / "CameraPose" / f"Camera_{k:03d}.txt")
        frames.append(CastleFrame(f"Images/{image_path.name}", image_path, depth_path, K, R, t, K_depth))
    if not frames:
        raise DatasetError(f"{root / 'Images'}: no Image_*.pgm files")
    return frames


def castle_pairs(frames: list[CastleFrame], step: int = 5) -> list[tuple[int, int]]:
    """Index pairs ``(i, i + step)`` for every ``i`` with ``i + step < len(frames)``."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return [(i, i + step) for i in range(len(frames) - step)]


def relative_pose(f0: CastleFrame, f1: CastleFrame) -> tuple[np.ndarray, np.ndarray]:
    """``cam1_from_cam0`` as ``(R [3, 3], t [3])`` between the image cameras."""
    return _relative_pose(f0.R, f0.t, f1.R, f1.t)


def _lift(K: np.ndarray, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pixels ``[N, 2]`` with z-depth ``[N]`` -> camera points ``[N, 3]``."""
    return np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], 1)


def _project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Camera points ``[N, 3]`` -> pixels ``[N, 2]``; NaN for points not in front of the camera."""
    z = np.where(X[:, 2] > 0, X[:, 2], np.nan)
    return np.stack([K[0, 0] * X[:, 0] / z + K[0, 2], K[1, 1] * X[:, 1] / z + K[1, 2]], 1)


def _nearest(uv: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest integer pixel ``(u, v)`` of ``uv [N, 2]`` and whether it lies inside ``shape``."""
    finite = np.isfinite(uv).all(1)
    ui = np.round(np.where(finite, uv[:, 0], -1)).astype(np.int64)
    vi = np.round(np.where(finite, uv[:, 1], -1)).astype(np.int64)
    inside = finite & (ui >= 0) & (ui < shape[1]) & (vi >= 0) & (vi < shape[0])
    return np.where(inside, ui, 0), np.where(inside, vi, 0), inside


def _depth_points(depth: np.ndarray, K_depth: np.ndarray, stride: int = 1) -> np.ndarray:
    """Points ``[N, 3]`` in the depth camera of the valid pixels of ``depth`` on a ``stride`` grid."""
    v, u = np.nonzero(depth[::stride, ::stride] > 0)
    uv = np.stack([u, v], 1).astype(np.float64) * stride
    return _lift(K_depth, uv, depth[v * stride, u * stride].astype(np.float64))


def registered_depth(frame: CastleFrame) -> np.ndarray:
    """Depth ``[H, W]`` float32 (metres, z in the *image* camera) aligned with the image; 0 = unknown.

    Each depth pixel is moved into the image camera and splatted to its nearest pixel, the nearest
    surface winning (z-buffer). One-pixel cracks left by surfaces that the shift stretches are filled
    from their two neighbours along a row or column when those differ by less than ``CRACK_GAP``, so no
    depth is invented across an occlusion edge. Disoccluded and out-of-view pixels stay 0. The image
    has the depth map's size (both 640x480).
    """
    depth = read_depth(frame.depth_path)
    X = _depth_points(depth, frame.K_depth) - DEPTH_FROM_CAM_T
    ui, vi, inside = _nearest(_project(frame.K, X), depth.shape)
    out = np.full(depth.shape, np.inf)
    np.minimum.at(out, (vi[inside], ui[inside]), X[inside, 2])
    out[np.isinf(out)] = 0.0
    for axis in (1, 0):
        pad = np.pad(out, 1)
        a, b = (pad[1:-1, :-2], pad[1:-1, 2:]) if axis == 1 else (pad[:-2, 1:-1], pad[2:, 1:-1])
        crack = (out == 0) & (a > 0) & (b > 0) & (np.abs(a - b) < CRACK_GAP)
        out = np.where(crack, 0.5 * (a + b), out)
    return out.astype(np.float32)


def reprojection_check(f0: CastleFrame, f1: CastleFrame, stride: int = 8, tol: float = 0.01) -> dict:
    """Check the ground truth of a pair by moving frame 0's depth into frame 1.

    Depth pixels of ``f0`` (every ``stride``-th row and column) are lifted in depth camera 0, moved to
    depth camera 1 with the poses, projected, and their z compared with ``f1``'s depth at the nearest
    pixel (points landing outside or on background are skipped). For the photometric error the same
    points are projected into both images and the intensities at the nearest pixels compared.

    Returns:
        ``median_depth_error`` (metres), ``consistent_fraction`` (share within ``tol`` metres),
        ``photometric_error`` (mean absolute difference of intensities in ``[0, 1]``), ``num_points``
        (points compared in depth).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    X0 = _depth_points(read_depth(f0.depth_path), f0.K_depth, stride) - DEPTH_FROM_CAM_T  # image camera 0
    R, t = relative_pose(f0, f1)
    X1 = X0 @ R.T + t
    Xd1 = X1 + DEPTH_FROM_CAM_T
    depth1 = read_depth(f1.depth_path)
    ui, vi, inside = _nearest(_project(f1.K_depth, Xd1), depth1.shape)
    z1 = np.where(inside, depth1[vi, ui], 0.0)
    err = np.abs(z1 - Xd1[:, 2])[z1 > 0]
    img0, img1 = read_image(f0.image_path, grayscale=True), read_image(f1.image_path, grayscale=True)
    u0, v0, in0 = _nearest(_project(f0.K, X0), img0.shape)
    u1, v1, in1 = _nearest(_project(f1.K, X1), img1.shape)
    both = in0 & in1
    photo = np.abs(img0[v0[both], u0[both]] - img1[v1[both], u1[both]])
    return {
        "median_depth_error": float(np.median(err)) if err.size else float("nan"),
        "consistent_fraction": float(np.mean(err < tol)) if err.size else 0.0,
        "photometric_error": float(photo.mean()) if photo.size else float("nan"),
        "num_points": int(err.size),
    }


def depth_match_error(f0: CastleFrame, f1: CastleFrame, kpts0: np.ndarray, kpts1: np.ndarray,
                      depth0: np.ndarray | None = None) -> np.ndarray:
    """Reprojection error ``[N]`` in pixels of matches ``kpts0 [N, 2] <-> kpts1 [N, 2]`` (x, y).

    ``kpts0`` is lifted along its own (sub-pixel) ray with the registered depth of image 0 at its
    *nearest* pixel (bilinear sampling would blend depths across occlusion edges), moved with
    ``cam1_from_cam0``, projected with ``f1.K`` and compared with ``kpts1``. NaN where ``kpts0`` is
    outside image 0, its depth is unknown, or the point is behind camera 1. ``depth0`` is
    ``registered_depth(f0)``, computed when omitted; pass it to reuse it across calls.
    """
    kpts0, kpts1 = matched_keypoints(kpts0, kpts1)
    depth0 = registered_depth(f0) if depth0 is None else np.asarray(depth0)
    if depth0.ndim != 2:
        raise ValueError(f"depth0 must have shape [H, W], got {list(depth0.shape)}")
    ui, vi, inside = _nearest(kpts0, depth0.shape)
    z = np.where(inside, depth0[vi, ui], 0.0).astype(np.float64)
    z[z <= 0] = np.nan  # NaN propagates to the error
    R, t = relative_pose(f0, f1)
    X1 = _lift(f0.K, kpts0, z) @ R.T + t
    return np.linalg.norm(_project(f1.K, X1) - kpts1, axis=1)
