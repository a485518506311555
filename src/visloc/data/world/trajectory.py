"""One traversal of a route: lanes and lateral offset, stops, the speed profile, and the camera poses in time.

The vehicle's reference point moves on the ground (z = 0) at signed lateral distance ``d(s)`` (metres, > 0 to
the left) from the route's smoothed centre line: ``p(s) = c(s) + d(s) n(s)``. ``d`` is the home lane's centre
(``-lane_width_m / 2``, right-hand traffic) plus the traversal's constant lateral offset, plus lane changes
into the lane on the left (``+lane_width_m``: overtaking, on the city's two-lane streets) and back, on straight
stretches of streets wide enough for it, each a quintic smooth step over ``lane_change_m``. Its heading follows
``p'(s) = (1 - kappa d) t + d' n``.

The speed profile (:mod:`visloc.data.world.motion`) runs along the vehicle's own path length: speed at most
``max_speed * speed_scale``, lateral acceleration at most ``max_lateral_accel`` on curves, bounded acceleration
and jerk, stops before some intersections (each node is a stop with probability ``stop_probability``) with a
dwell time, at rest at the start and the end.

The camera is fixed on the vehicle: its centre is ``p + forward_m f + height_m z`` (``f`` the heading), it looks
along the heading, pitched by ``pitch_deg`` (> 0 up), level roll; poses are ``cam_from_world`` (OpenCV axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visloc.conf import ConfError
from visloc.data.world.motion import Limits, Profile, plan_profile
from visloc.data.world.route import Centreline, Route


@dataclass(frozen=True)
class VehicleConf:
    """The vehicle's motion, lanes and camera mount (every field checked, ``ConfError`` naming it).

    Attributes:
        max_speed_mps, max_accel_mps2, max_decel_mps2, max_jerk_mps3, max_lateral_accel_mps2: motion limits.
        stop_probability: chance of a stop before each intersection passed; ``stop_dwell_s``: its dwell.
        lane_width_m: lane width (home lane centre at ``-lane_width_m / 2``); ``curb_margin_m``: least distance
            from the vehicle's reference point to the facade line (the pavement and half the vehicle).
        lane_change_probability: chance of a lane change (there and back) on each street that allows one;
            ``lane_change_m``: length of one change.
        cam_height_m, cam_forward_m, cam_pitch_deg: the camera mount.
    """

    max_speed_mps: float = 10.0
    max_accel_mps2: float = 1.5
    max_decel_mps2: float = 2.5
    max_jerk_mps3: float = 1.5
    max_lateral_accel_mps2: float = 3.0
    stop_probability: float = 0.4
    stop_dwell_s: float = 3.0
    lane_width_m: float = 2.5
    curb_margin_m: float = 2.0
    lane_change_probability: float = 0.5
    lane_change_m: float = 20.0
    cam_height_m: float = 1.5
    cam_forward_m: float = 1.0
    cam_pitch_deg: float = -2.0

    def __post_init__(self) -> None:
        positive = ("max_speed_mps", "max_accel_mps2", "max_decel_mps2", "max_jerk_mps3", "max_lateral_accel_mps2",
                    "lane_width_m", "lane_change_m", "cam_height_m")
        for name in positive:
            _check(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))
        for name in ("stop_probability", "lane_change_probability"):
            _check(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]", getattr(self, name))
        for name in ("stop_dwell_s", "curb_margin_m", "cam_forward_m"):
            _check(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        _check(-60 <= self.cam_pitch_deg <= 60, "cam_pitch_deg", "must be in [-60, 60]", self.cam_pitch_deg)


def _check(ok: bool, name: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"VehicleConf.{name}: {problem}, got {value!r}")


@dataclass(frozen=True)
class Trajectory:
    """A traversal sampled at times ``t_us`` (int64 [N], microseconds, strictly increasing).

    Attributes:
        t_us: timestamps; ``s``: float64 [N] path length driven (metres); ``speed`` [N] (m/s); ``accel`` [N]
            (m/s^2, along the path).
        position: float64 [N, 3] vehicle reference point (ENU metres, z = 0).
        heading: float64 [N] vehicle heading (radians from +x towards +y).
        lateral: float64 [N] signed distance to the route's centre line (metres, > 0 left).
        street_id: int64 [N] the street the vehicle is on.
        cam_center: float64 [N, 3] camera centres (ENU metres); ``R``: float64 [N, 3, 3] ``cam_from_world``
            rotations (``t = -R @ cam_center``).
    """

    t_us: np.ndarray
    s: np.ndarray
    speed: np.ndarray
    accel: np.ndarray
    position: np.ndarray
    heading: np.ndarray
    lateral: np.ndarray
    street_id: np.ndarray
    cam_center: np.ndarray
    R: np.ndarray


@dataclass(frozen=True)
class VehiclePath:
    """The vehicle's path of one traversal, sampled like the centre line (index ``i`` = centre-line sample).

    Attributes:
        s: float64 [M] the vehicle's own path length (metres); ``xy`` [M, 2]; ``heading`` [M] (radians,
            unwrapped); ``lateral`` [M] (metres); ``street_id`` int64 [M].
        stops: (path length, dwell seconds) of the stops; ``caps``: (start, end, max speed) of the curves.
    """

    s: np.ndarray
    xy: np.ndarray
    heading: np.ndarray
    lateral: np.ndarray
    street_id: np.ndarray
    stops: list[tuple[float, float]]
    caps: list[tuple[float, float, float]]


#: a stop is this far before the intersection (metres)
_STOP_LINE_M = 1.5


def _smoothstep(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.clip(u, 0.0, 1.0)
    return u ** 3 * (10 - 15 * u + 6 * u * u), 30 * u * u * (1 - u) ** 2


def _entry(line: Centreline, route: Route, k: int) -> float:
    """Arc length where the route enters node ``k``'s intersection (or its arc, if that comes first)."""
    return float(line.arc_start[k] + min(0.0, line.tan_len[k] - route.node_half_width[k]))


def _exit(line: Centreline, route: Route, k: int) -> float:
    """Arc length where the route leaves node ``k``'s intersection (or its arc, if that ends later)."""
    return float(line.arc_end[k] + max(0.0, route.node_half_width[k] - line.tan_len[k]))


def lateral_profile(line: Centreline, route: Route, conf: VehicleConf, offset_m: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Signed lateral distance ``d`` [M] and its derivative ``d'`` [M] along the centre line.

    Lane changes (there, at least 5 m in the lane on the left, back) keep clear of the stop lines at both ends.
    """
    home = -conf.lane_width_m / 2 + offset_m
    d, dd = np.full(len(line.s), home), np.zeros(len(line.s))
    L = conf.lane_change_m
    for k, width in enumerate(route.widths):
        fits = abs(home + conf.lane_width_m) <= width / 2 - conf.curb_margin_m
        a = _exit(line, route, k) + 2.0  # the street's stretch between its intersections, clear of stop lines
        b = _entry(line, route, k + 1) - _STOP_LINE_M - 2.0
        room = b - a - 2 * L - 5.0
        if not fits or room <= 0 or rng.random() >= conf.lane_change_probability:
            continue
        start = a + rng.uniform(0, room)
        hold = 5.0 + rng.uniform(0, room - (start - a))
        for s0, sign in ((start, 1.0), (start + L + hold, -1.0)):
            h, dh = _smoothstep((line.s - s0) / L)
            d += sign * conf.lane_width_m * h
            dd += sign * conf.lane_width_m * dh / L
    return d, dd


def vehicle_path(line: Centreline, route: Route, conf: VehicleConf, offset_m: float, speed_scale: float,
                 rng: np.random.Generator, end_margin_m: float = 8.0) -> VehiclePath:
    """The traversal's path, stops and curve speed caps (trimmed ``end_margin_m`` from the route's ends)."""
    d, dd = lateral_profile(line, route, conf, offset_m, rng)
    keep = (line.s >= end_margin_m) & (line.s <= line.s[-1] - end_margin_m)
    xy = line.xy + d[:, None] * line.normal
    der = (1 - line.curvature * d)[:, None] * line.tangent + dd[:, None] * line.normal
    heading = np.unwrap(np.arctan2(der[:, 1], der[:, 0]))
    xy, heading, d = xy[keep], heading[keep], d[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    street = np.asarray(route.street_ids, np.int64)[line.edge[keep]]
    s_c = line.s[keep]
    stops = []
    for k in range(1, len(route.street_ids)):
        sc = _entry(line, route, k) - _STOP_LINE_M
        if rng.random() < conf.stop_probability and s_c[0] + 5 < sc < s_c[-1] - 5:
            stops.append((float(np.interp(sc, s_c, s)), conf.stop_dwell_s))
    caps = _curve_caps(s, heading, conf.max_lateral_accel_mps2, conf.max_speed_mps * speed_scale)
    return VehiclePath(s, xy, heading, d, street, stops, caps)


def _curve_caps(s: np.ndarray, heading: np.ndarray, a_lat: float, v_max: float) -> list[tuple[float, float, float]]:
    """(start, end, cap) runs where the lateral acceleration limit is below ``v_max``."""
    kappa = np.abs(np.gradient(heading, s))
    cap = np.sqrt(a_lat / np.maximum(kappa, 1e-12))
    slow = cap < v_max
    edges = np.flatnonzero(np.diff(np.concatenate([[0], slow.astype(np.int8), [0]])))
    runs = []
    for i0, i1 in zip(edges[::2], edges[1::2], strict=True):
        a, b = max(i0 - 1, 0), min(i1, len(s) - 1)  # one sample of margin each side
        runs.append((float(s[a]), float(s[b]), float(cap[i0:i1].min())))
    return runs


def drive(path: VehiclePath, conf: VehicleConf, speed_scale: float, pose_hz: int, start_dwell_s: float = 1.0,
          end_dwell_s: float = 1.0) -> tuple[Trajectory, Profile]:
    """Drive ``path`` and sample the traversal at ``pose_hz`` (timestamps ``round(k * 1e6 / pose_hz)`` us)."""
    lim = Limits(conf.max_speed_mps * speed_scale, conf.max_accel_mps2, conf.max_decel_mps2, conf.max_jerk_mps3)
    profile = plan_profile(float(path.s[-1]), path.stops, path.caps, lim, start_dwell_s, end_dwell_s)
    n = int(np.floor(profile.duration * pose_hz)) + 1
    k = np.arange(n, dtype=np.int64)
    t_us = (k * 1_000_000 + pose_hz // 2) // pose_hz
    s, v, a = profile.sample(t_us / 1e6)
    x, y = np.interp(s, path.s, path.xy[:, 0]), np.interp(s, path.s, path.xy[:, 1])
    heading = np.interp(s, path.s, path.heading)
    idx = np.clip(np.searchsorted(path.s, s, side="right") - 1, 0, len(path.s) - 1)
    position = np.stack([x, y, np.zeros(n)], 1)
    center, R = camera_poses(position, heading, conf)
    traj = Trajectory(t_us, s, v, a, position, heading, np.interp(s, path.s, path.lateral), path.street_id[idx],
                      center, R)
    return traj, profile


def camera_poses(position: np.ndarray, heading: np.ndarray, conf: VehicleConf) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres [N, 3] and ``cam_from_world`` rotations [N, 3, 3] of the mount on a level vehicle."""
    c, s = np.cos(heading), np.sin(heading)
    fwd = np.stack([c, s, np.zeros_like(c)], 1)
    center = position + conf.cam_forward_m * fwd + np.array([0.0, 0.0, conf.cam_height_m])
    p = np.deg2rad(conf.cam_pitch_deg)
    forward = np.stack([c * np.cos(p), s * np.cos(p), np.full_like(c, np.sin(p))], 1)
    right = np.stack([s, -c, np.zeros_like(c)], 1)
    down = np.cross(forward, right)
    return center, np.stack([right, down, forward], 1)  # rows: camera axes in world coordinates
