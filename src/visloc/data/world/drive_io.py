"""The files of a drive traversal: the full-rate ``poses.csv`` (and its reader), ``frames.txt``.

``poses.csv`` has a header line and one row per pose (``pose_hz``), columns:

- ``t_us``: int64 timestamp, microseconds of simulated time from the traversal's start.
- ``x, y, z``: camera centre in the city's world frame (ENU metres: x east, y north, z up, ground z = 0).
- ``qw, qx, qy, qz``: rotation of ``cam_from_world`` (OpenCV camera axes; ``t = -R @ (x, y, z)``).
- ``lat, lon``: WGS84 degrees of the camera centre; ``utm_e, utm_n``: UTM metres; ``zone``: UTM zone (``18N``).
- ``speed``: m/s; ``street_id``: the street the vehicle is on.
- ``alt``: WGS84 ellipsoidal height (metres); ``accel``: m/s^2 along the path; ``heading_deg``: the vehicle's
  heading (degrees from east towards north); ``lateral_m``: signed distance of the vehicle to the route's
  centre line (metres, > 0 left).

``frames.txt``: ``t_us name`` per rendered frame written (name relative to the dataset folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from visloc.data.world.geodesy import GeoOrigin, enu_to_geodetic, geodetic_to_utm
from visloc.data.world.trajectory import Trajectory
from visloc.errors import InputError
from visloc.io.text import read_text

POSE_COLUMNS = ("t_us", "x", "y", "z", "qw", "qx", "qy", "qz", "lat", "lon", "utm_e", "utm_n", "zone", "speed",
                "street_id", "alt", "accel", "heading_deg", "lateral_m")
_FORMATS = ("d", ".6f", ".6f", ".6f", ".9f", ".9f", ".9f", ".9f", ".10f", ".10f", ".4f", ".4f", "s", ".5f", "d",
            ".4f", ".5f", ".5f", ".5f")


def quaternions(R: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions ``(qw, qx, qy, qz)`` with ``qw >= 0`` of rotations ``R`` [N, 3, 3]."""
    q = Rotation.from_matrix(R).as_quat()[:, [3, 0, 1, 2]]
    return np.where(q[:, :1] < 0, -q, q)


def poses_csv_text(traj: Trajectory, origin: GeoOrigin) -> str:
    """The ``poses.csv`` text of a trajectory (see the module docstring)."""
    lat, lon, alt = enu_to_geodetic(traj.cam_center, origin)
    east, north, zone = geodetic_to_utm(lat, lon)
    q = quaternions(traj.R)
    c = traj.cam_center
    cols = [traj.t_us, c[:, 0], c[:, 1], c[:, 2], q[:, 0], q[:, 1], q[:, 2], q[:, 3], lat, lon, east, north, zone,
            traj.speed, traj.street_id, alt, traj.accel, np.rad2deg(traj.heading), traj.lateral]
    fmt = ",".join("{:" + f + "}" for f in _FORMATS) + "\n"
    rows = zip(*(col.tolist() for col in cols), strict=True)
    return ",".join(POSE_COLUMNS) + "\n" + "".join(fmt.format(*row) for row in rows)


def read_poses_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``poses.csv`` by name: ``t_us`` and ``street_id`` int64, ``zone`` str, the rest float64."""
    path = Path(path)
    lines = read_text(path, InputError).splitlines()
    if not lines or tuple(lines[0].split(",")) != POSE_COLUMNS:
        raise InputError(f"{path}: expected the header {','.join(POSE_COLUMNS)}")
    fields = [line.split(",") for line in lines[1:] if line]
    if any(len(f) != len(POSE_COLUMNS) for f in fields):
        raise InputError(f"{path}: every row must have {len(POSE_COLUMNS)} fields")
    table = list(zip(*fields, strict=True)) if fields else [() for _ in POSE_COLUMNS]
    out: dict[str, np.ndarray] = {}
    for name, col in zip(POSE_COLUMNS, table, strict=True):
        if name in ("t_us", "street_id"):
            out[name] = np.array(col, dtype=np.int64)
        elif name == "zone":
            out[name] = np.array(col, dtype=str)
        else:
            out[name] = np.array(col, dtype=np.float64)
    return out


def read_drive_yaml(path: str | Path) -> dict:
    """A drive folder's ``world.yaml`` or ``route.yaml`` as a mapping; ``InputError`` naming it otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found (not a finished world drive folder?)")
    try:
        data = yaml.safe_load(read_text(path, InputError))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not readable YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping")
    return data


def read_frames_txt(path: str | Path) -> list[tuple[int, str]]:
    """``(t_us, name)`` of each line of a ``frames.txt``."""
    path = Path(path)
    out = []
    for i, line in enumerate(read_text(path, InputError).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise InputError(f"{path}:{i}: expected 't_us name', got {line!r}")
        out.append((int(parts[0]), parts[1]))
    return out
