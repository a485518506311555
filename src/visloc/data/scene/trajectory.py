"""Camera poses in the street world: the database walk, the offset queries, and a smooth walk for videos.

Headings (yaw) are measured in the ground plane from +x (down the street) towards +y (left); pitch is
positive upwards. Poses are ``cam_from_world`` with OpenCV camera axes (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np

from visloc.data.scene.config import SceneConf
from visloc.io.poses import CameraPose

_UP = np.array([0.0, 0.0, 1.0])


def pose_from_heading(center: object, yaw_deg: float, pitch_deg: float = 0.0) -> CameraPose:
    """``cam_from_world`` of a level-horizon camera at ``center`` [3] looking along ``yaw_deg``, ``pitch_deg``."""
    c = np.asarray(center, dtype=np.float64)
    yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.cross(forward, _UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    return CameraPose(R, -R @ c)


def _walk_x(conf: SceneConf, n: int) -> np.ndarray:
    margin = min(2.0, conf.street_length_m / 10)
    return np.linspace(margin, conf.street_length_m - margin, n)


def db_poses(conf: SceneConf) -> list[CameraPose]:
    """Database poses, stop by stop, each stop seen at every heading of ``db_yaws_deg`` in turn.

    The ``num_db / len(db_yaws_deg)`` stops are evenly spaced down the street's centre line, at eye height,
    with a level camera.
    """
    stops = conf.num_db // len(conf.db_yaws_deg)
    return [pose_from_heading((x, 0.0, conf.eye_height_m), yaw) for x in _walk_x(conf, stops)
            for yaw in conf.db_yaws_deg]


def query_poses(conf: SceneConf) -> tuple[list[CameraPose], list[str]]:
    """Query poses and their conditions, reproducible from ``conf.seed``.

    Query ``i`` stands at a random point of the walked segment, moved by the offsets of ``conf.offsets``
    (uniform in ``[-x, x]`` each), and looks along a random database heading plus a yaw/pitch offset; its
    condition is ``conf.query_conditions[i % len]``.
    """
    rng = np.random.default_rng([conf.seed, 2])
    o = conf.offsets
    xs = _walk_x(conf, 2)
    poses, conditions = [], []
    for i in range(conf.num_queries):
        x = rng.uniform(xs[0], xs[1]) + rng.uniform(-o.along_m, o.along_m)
        y = rng.uniform(-o.lateral_m, o.lateral_m)
        z = conf.eye_height_m + rng.uniform(-o.height_m, o.height_m)
        yaw = conf.db_yaws_deg[int(rng.integers(len(conf.db_yaws_deg)))] + rng.uniform(-o.yaw_deg, o.yaw_deg)
        pitch = rng.uniform(-o.pitch_deg, o.pitch_deg)
        poses.append(pose_from_heading((x, y, z), yaw, pitch))
        conditions.append(conf.query_conditions[i % len(conf.query_conditions)])
    return poses, conditions


def smooth_walk(conf: SceneConf, num_frames: int, yaw_amplitude_deg: float = 30.0,
                yaw_period_m: float = 12.0) -> list[CameraPose]:
    """A continuous walk down the centre line with a sinusoidal heading (for videos and event streams).

    Args:
        conf: scene configuration (street length, eye height).
        num_frames: number of poses, evenly spaced along the street (>= 2).
        yaw_amplitude_deg: amplitude of the heading oscillation.
        yaw_period_m: distance walked per heading oscillation (metres, > 0).
    """
    if num_frames < 2:
        raise ValueError(f"smooth_walk: num_frames must be >= 2, got {num_frames}")
    if yaw_period_m <= 0:
        raise ValueError(f"smooth_walk: yaw_period_m must be > 0, got {yaw_period_m}")
    return [pose_from_heading((x, 0.0, conf.eye_height_m), yaw_amplitude_deg * np.sin(2 * np.pi * x / yaw_period_m))
            for x in _walk_x(conf, num_frames)]
