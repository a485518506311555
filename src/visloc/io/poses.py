"""Camera poses and intrinsics as text files (the formats of COLMAP and visuallocalization.net).

Poses file: one line per image, ``name qw qx qy qz tx ty tz``. The pose is ``cam_from_world``
(world-to-camera, as COLMAP): a world point ``X`` is ``R @ X + t`` in the camera frame (OpenCV axes:
x right, y down, z forward), with ``R`` the rotation of the unit quaternion ``(qw, qx, qy, qz)``.

Cameras file: one line per image, ``name MODEL WIDTH HEIGHT params...`` with COLMAP's camera models and
parameter order (e.g. ``PINHOLE 640 480 fx fy cx cy``). The principal point follows COLMAP's
convention: the centre of the top-left pixel is ``(0.5, 0.5)``. visloc's keypoints and ``K`` matrices use
OpenCV's (centre of the top-left pixel at ``(0, 0)``), so ``cx_colmap = cx_opencv + 0.5``:
:meth:`Camera.from_opencv` and :attr:`Camera.K_opencv` do that conversion, nothing else should.

Blank lines and lines starting with ``#`` are ignored in both files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from visloc.errors import VislocError
from visloc.io.atomic import atomic_write_text
from visloc.io.text import read_text

if TYPE_CHECKING:  # pycolmap is imported on use
    import pycolmap

#: COLMAP camera models and their number of parameters
CAMERA_MODELS: dict[str, int] = {
    "SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8,
    "OPENCV_FISHEYE": 8, "FULL_OPENCV": 12, "FOV": 5, "SIMPLE_RADIAL_FISHEYE": 4, "RADIAL_FISHEYE": 5,
    "THIN_PRISM_FISHEYE": 12,
}
#: models whose first parameters are ``f, cx, cy`` (one focal) or ``fx, fy, cx, cy``
_ONE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV"}



class PoseFileError(VislocError, ValueError):
    """A poses or cameras file that cannot be parsed."""


@dataclass(frozen=True, eq=False)
class CameraPose:
    """``cam_from_world``: ``x_cam = R @ x_world + t``.

    Attributes:
        R: [3, 3] rotation matrix, float64.
        t: [3] translation, float64, in world units.
    """

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        R = np.asarray(self.R, dtype=np.float64)
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        if R.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"CameraPose: expected R [3, 3] and t [3], got {R.shape} and {t.shape}")
        if not (np.isfinite(R).all() and np.isfinite(t).all()):
            raise ValueError("CameraPose: R and t must be finite")
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-5 or np.linalg.det(R) < 0:
            raise ValueError("CameraPose: R is not a rotation matrix")
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @classmethod
    def from_qvec(cls, qvec: object, t: object) -> CameraPose:
        """Build from a quaternion ``(qw, qx, qy, qz)`` (normalised here) and a translation [3]."""
        q = np.asarray(qvec, dtype=np.float64).reshape(-1)
        if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) < 1e-12:
            raise ValueError(f"CameraPose.from_qvec: expected a non-zero quaternion [4], got {q.tolist()}")
        return cls(Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix(), np.asarray(t, dtype=np.float64))

    @property
    def qvec(self) -> np.ndarray:
        """[4] unit quaternion ``(qw, qx, qy, qz)`` with ``qw >= 0``."""
        x, y, z, w = Rotation.from_matrix(self.R).as_quat()
        q = np.array([w, x, y, z])
        return -q if w < 0 else q

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates, ``-R^T t``."""
        return -self.R.T @ self.t

    def inverse(self) -> CameraPose:
        """``world_from_cam``."""
        return CameraPose(self.R.T, -self.R.T @ self.t)

    def __mul__(self, other: CameraPose) -> CameraPose:
        """Compose: ``(a * b)(x) = a(b(x))``."""
        return CameraPose(self.R @ other.R, self.R @ other.t + self.t)

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Map world points [N, 3] into the camera frame [N, 3]."""
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.t


@dataclass(frozen=True)
class Camera:
    """A COLMAP camera: model name, image size in pixels, parameters in COLMAP's order and convention."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"Camera: unknown model {self.model!r}; expected one of {sorted(CAMERA_MODELS)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Camera: width and height must be positive, got {self.width}x{self.height}")
        if len(self.params) != CAMERA_MODELS[self.model]:
            raise ValueError(f"Camera: {self.model} takes {CAMERA_MODELS[self.model]} parameters, "
                             f"got {len(self.params)}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if not all(math.isfinite(p) for p in self.params):
            raise ValueError(f"Camera: parameters must be finite, got {self.params}")
        focals = self.params[:1] if self.model in _ONE_FOCAL else self.params[:2]
        if min(focals) <= 0:
            raise ValueError(f"Camera: focal length must be > 0, got {min(focals):g}")

    @classmethod
    def from_opencv(cls, K: np.ndarray, width: int, height: int) -> Camera:
        """A ``PINHOLE`` camera from an OpenCV ``K`` [3, 3] (pixel centre at 0): adds 0.5 to the centre."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"Camera.from_opencv: expected K [3, 3], got {K.shape}")
        return cls("PINHOLE", int(width), int(height), (K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))

    @property
    def K_opencv(self) -> np.ndarray:  # noqa: N802 (the matrix is called K)
        """[3, 3] intrinsics in OpenCV's convention (pixel centre at 0); distortion is ignored."""
        p = self.params
        if self.model in _ONE_FOCAL:
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        else:
            fx, fy, cx, cy = p[:4]
        return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])

    def to_pycolmap(self, camera_id: int = 1) -> pycolmap.Camera:
        """The equivalent ``pycolmap.Camera``."""
        import pycolmap

        return pycolmap.Camera(model=self.model, width=self.width, height=self.height,
                               params=list(self.params), camera_id=camera_id)

    def line(self) -> str:
        """``MODEL WIDTH HEIGHT params...`` as written in a cameras file."""
        return " ".join([self.model, str(self.width), str(self.height), *(repr(p) for p in self.params)])


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    for i, line in enumerate(read_text(path, PoseFileError).splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((i, line.split()))
    return out


def read_poses(path: str | Path) -> dict[str, CameraPose]:
    """Read a poses file (``name qw qx qy qz tx ty tz`` per line) into ``{name: cam_from_world}``."""
    path = Path(path)
    poses: dict[str, CameraPose] = {}
    for i, fields in _lines(path):
        if len(fields) != 8:
            raise PoseFileError(f"{path}:{i}: expected 'name qw qx qy qz tx ty tz', got {len(fields)} fields")
        name = fields[0]
        if name in poses:
            raise PoseFileError(f"{path}:{i}: duplicate image {name!r}")
        try:
            values = [float(v) for v in fields[1:]]
            poses[name] = CameraPose.from_qvec(values[:4], values[4:])
        except ValueError as e:
            raise PoseFileError(f"{path}:{i}: {e}") from None
    return poses


def write_poses(path: str | Path, poses: Mapping[str, CameraPose]) -> Path:
    """Write ``{name: cam_from_world}`` atomically, one line per image, in the order given."""
    lines = []
    for name, pose in poses.items():
        if any(c.isspace() for c in name):
            raise ValueError(f"write_poses: image name {name!r} contains whitespace")
        values = [*pose.qvec, *pose.t]
        lines.append(name + " " + " ".join(f"{v:.10g}" for v in values) + "\n")
    return atomic_write_text(path, "".join(lines))


def read_cameras(path: str | Path) -> dict[str, Camera]:
    """Read a cameras file (``name MODEL WIDTH HEIGHT params...`` per line) into ``{name: Camera}``."""
    path = Path(path)
    cameras: dict[str, Camera] = {}
    for i, fields in _lines(path):
        if len(fields) < 5:
            raise PoseFileError(f"{path}:{i}: expected 'name MODEL WIDTH HEIGHT params...'")
        name = fields[0]
        if name in cameras:
            raise PoseFileError(f"{path}:{i}: duplicate image {name!r}")
        try:
            cameras[name] = Camera(fields[1], int(fields[2]), int(fields[3]), tuple(float(v) for v in fields[4:]))
        except ValueError as e:
            raise PoseFileError(f"{path}:{i}: {e}") from None
    return cameras


def write_cameras(path: str | Path, cameras: Mapping[str, Camera]) -> Path:
    """Write ``{name: Camera}`` atomically, one line per image."""
    for name in cameras:
        if any(c.isspace() for c in name):
            raise ValueError(f"write_cameras: image name {name!r} contains whitespace")
    return atomic_write_text(path, "".join(f"{name} {cam.line()}\n" for name, cam in cameras.items()))
