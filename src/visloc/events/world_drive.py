"""Events of a world ``drive`` traversal: frames rendered at an adaptive rate from the exact poses, then ESIM.

A traversal of the ``drive`` generator (:mod:`visloc.data.world.drive`) has its poses at ``pose_hz`` (1000 Hz by
default) in ``poses.csv``, but frames only at ``render_hz``. Here the city is rendered again at the times the
simulator needs, at poses interpolated between the samples (``DriveTraversal.pose_at``: centre linear,
rotation slerped): after a frame at ``t``, the next one is ``dt`` later with no pixel moving more than
``max_flow_px`` (ESIM's adaptive sampling, ``dt = lambda / max |flow|``). The motion is the renderer's exact
flow: each pixel of a grid (every ``flow_stride_px``) is carried through its depth from ``t`` to
``t + PROBE_US`` and the largest displacement sets the rate; ``dt`` is clamped to ``[MIN_STEP_US,
1 / min_rate_hz]``. The motion over ``dt`` is then measured on the same grid, and when the first-order step
overshot (a start after a stop, the perspective growth of near points) ``dt`` is shrunk once in proportion.
``flow_checked`` in the summary is the largest displacement measured between the frames actually rendered
(on the grid: the true maximum can be a little larger), and ``over_budget`` counts frame pairs still above
``max_flow_px``. At the default camera the road just below the image's bottom corners moves fastest: about
0.8 px per ms at 10 m/s, so ``max_flow_px = 1`` renders about 1300 frames per second of drive at top speed.

The light is the traversal's condition seen by a sensor with its own noise model
(``apply_conditions(..., camera=False)``: no frame-camera blur or noise; rain streaks, when a condition has
rain, are redrawn every frame and flicker), decoded to linear intensity and turned into luminance; ESIM's
log intensity, thresholds, refractory period, leak and shot noise then apply (:mod:`visloc.events.simulator`).
Deterministic per seed: the condition's random draws come from ``job_rng`` of the world seed and the frame's
pose index, the simulator's from ``EsimConf.seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial.transform import Rotation

from visloc.conf import ConfError, load_conf
from visloc.data.world.drive_io import read_drive_yaml, read_poses_csv
from visloc.errors import InputError
from visloc.events.simulator import EsimConf, EventSimulator
from visloc.events.stream import EventStream
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City

#: the motion rate is probed over this span (µs; the default pose spacing)
PROBE_US = 1000
#: the shortest frame interval (µs)
MIN_STEP_US = 20
#: bump when the same conf and drive give other events (a stored event file is then not resumed)
ALGORITHM = 2


@dataclass(frozen=True)
class WorldEventsConf:
    """How a drive traversal becomes events.

    Attributes:
        esim: the simulated sensor (thresholds, mismatch, refractory, leak, shot noise, seed).
        max_flow_px: the most any pixel may move between two rendered frames (pixels; ESIM's adaptive
            sampling ``lambda``).
        min_rate_hz: a frame at least this often, also when nothing moves (leak and shot noise go on).
        flow_stride_px: grid step of the flow estimate (pixels).
    """

    esim: EsimConf = field(default_factory=EsimConf)
    max_flow_px: float = 0.5
    min_rate_hz: float = 20.0
    flow_stride_px: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.max_flow_px <= 10:
            raise ConfError(f"WorldEventsConf.max_flow_px: must be in (0, 10], got {self.max_flow_px}")
        if not 0 < self.min_rate_hz <= 1000:
            raise ConfError(f"WorldEventsConf.min_rate_hz: must be in (0, 1000], got {self.min_rate_hz}")
        if not 1 <= self.flow_stride_px <= 64:
            raise ConfError(f"WorldEventsConf.flow_stride_px: must be in [1, 64], got {self.flow_stride_px}")


@dataclass(frozen=True)
class DriveTraversal:
    """One traversal of a drive folder, as the simulator needs it.

    Attributes:
        root: the drive folder; ``name``: the traversal's folder name; ``condition``: its condition name.
        split: the split the drive shows; ``seed``: the world seed; ``city``: the city's conf as recorded.
        t_us: ``[N]`` int64 pose times (µs from the traversal's start); ``R`` ``[N, 3, 3]`` and ``centre``
            ``[N, 3]``: ``cam_from_world`` rotations and camera centres (world ENU metres).
        K: ``[3, 3]`` intrinsics; ``size``: ``(W, H)``.
    """

    root: Path
    name: str
    condition: str
    split: str
    seed: int
    city: dict[str, Any]
    t_us: np.ndarray
    R: np.ndarray
    centre: np.ndarray
    K: np.ndarray
    size: tuple[int, int]

    def pose(self, i: int) -> CameraPose:
        """``cam_from_world`` of pose ``i``."""
        return CameraPose(self.R[i], -self.R[i] @ self.centre[i])

    def pose_at(self, t_us: int) -> CameraPose:
        """``cam_from_world`` at ``t_us`` (clamped to the poses).

        The centre is linear and the rotation slerped between the two poses around ``t_us`` (the vehicle's
        trajectory is smooth at the pose rate).
        """
        j = int(np.clip(np.searchsorted(self.t_us, t_us, side="right") - 1, 0, len(self.t_us) - 2))
        w = float(np.clip((t_us - self.t_us[j]) / (self.t_us[j + 1] - self.t_us[j]), 0.0, 1.0))
        if w == 0.0:
            return self.pose(j)
        r0 = Rotation.from_matrix(self.R[j])
        rel = (r0.inv() * Rotation.from_matrix(self.R[j + 1])).as_rotvec()
        R = (r0 * Rotation.from_rotvec(w * rel)).as_matrix()
        c = (1 - w) * self.centre[j] + w * self.centre[j + 1]
        return CameraPose(R, -R @ c)

    @property
    def pose_hz(self) -> float:
        """Pose rate (Hz), from the first two poses."""
        return 1e6 / float(self.t_us[1] - self.t_us[0])


def drive_traversals(root: str | Path) -> list[str]:
    """The traversal names of the drive folder ``root``, in ``route.yaml`` order."""
    route = read_drive_yaml(Path(root) / "route.yaml")
    return [str(t["name"]) for t in route.get("traversals", [])]


def read_traversal(root: str | Path, name: str) -> DriveTraversal:
    """Traversal ``name`` of the finished drive folder ``root`` (``world.yaml``, ``route.yaml``, ``poses.csv``).

    Raises:
        InputError: not a finished drive folder, no such traversal, or a poses file that is not the generator's.
    """
    from visloc.data.scene.render import intrinsics

    root = Path(root)
    world, route = read_drive_yaml(root / "world.yaml"), read_drive_yaml(root / "route.yaml")
    if world.get("kind") != "drive":
        raise InputError(f"{root / 'world.yaml'}: a world {world.get('kind')!r} dataset, not a drive")
    trav = {str(t["name"]): t for t in route.get("traversals", [])}
    if name not in trav:
        raise InputError(f"{root}: no traversal {name!r} (it has {', '.join(trav) or 'none'})")
    cols = read_poses_csv(root / name / "poses.csv")
    if len(cols["t_us"]) < 2 or np.any(np.diff(cols["t_us"]) <= 0):
        raise InputError(f"{root / name / 'poses.csv'}: needs at least two poses in increasing time")
    q = np.stack([cols["qx"], cols["qy"], cols["qz"], cols["qw"]], axis=1)
    cam = route["camera"]
    size = (int(cam["width"]), int(cam["height"]))
    return DriveTraversal(root, name, str(trav[name]["condition"]), str(world["split"]), int(world["seed"]),
                          dict(world["conf"]["city"]), cols["t_us"], Rotation.from_quat(q).as_matrix(),
                          np.stack([cols["x"], cols["y"], cols["z"]], axis=1), intrinsics(float(cam["focal"]), *size),
                          size)


def max_displacement(depth: np.ndarray, K: np.ndarray, pose0: CameraPose, pose1: CameraPose, stride: int) -> float:
    """The largest image motion (pixels) of the pixels on a ``stride`` grid from ``pose0`` to ``pose1``.

    Each grid pixel with a finite depth (z-depth, metres; ``inf`` is the sky, which does not move with a
    translation and is left out) is unprojected, moved to camera 1 and projected; points that end behind
    camera 1 (z < 1 cm) are left out. 0 when no point is left.
    """
    h, w = depth.shape
    v, u = np.mgrid[0:h:stride, 0:w:stride]
    z = depth[v, u].astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    if not ok.any():
        return 0.0
    uv = np.stack([u[ok], v[ok]], axis=1).astype(np.float64)
    rays = (np.linalg.inv(K) @ np.c_[uv, np.ones(len(uv))].T).T * z[ok, None]
    world = (rays - pose0.t) @ pose0.R  # R0^T (X0 - t0)
    x1 = world @ pose1.R.T + pose1.t
    front = x1[:, 2] > 0.01
    if not front.any():
        return 0.0
    proj = (K @ x1[front].T).T
    uv1 = proj[:, :2] / proj[:, 2:3]
    return float(np.max(np.linalg.norm(uv1 - uv[front], axis=1)))


@dataclass
class TraversalEvents:
    """Progress of one traversal's simulation: counts and the motion actually seen between rendered frames."""

    frames: int = 0
    events: int = 0
    flow_checked: float = 0.0
    over_budget: int = 0
    duration_us: int = 0


class WorldEventSource:
    """Renders one traversal at the adaptive rate and simulates its events, chunk by chunk.

    Args:
        traversal: the traversal (:func:`read_traversal`).
        conf: the simulation conf.
        city: the city, built from the traversal's city conf and the condition's season when None.
    """

    def __init__(self, traversal: DriveTraversal, conf: WorldEventsConf, city: City | None = None) -> None:
        from visloc.data.scene.city import build_city
        from visloc.data.scene.city_conf import CityConf
        from visloc.data.scene.conditions import parse_condition

        self.traversal, self.conf = traversal, conf
        self.condition = parse_condition(traversal.condition)
        self.city = city if city is not None else build_city(load_conf(CityConf, traversal.city, "world.yaml city"),
                                                             season=self.condition.season)
        self.stats = TraversalEvents()
        self._max_dt = max(MIN_STEP_US, int(1e6 / conf.min_rate_hz))

    def light(self, t_us: int) -> tuple[np.ndarray, np.ndarray]:
        """``(luminance [H, W] float64 linear in [0, 1], depth [H, W] float32)`` at time ``t_us``."""
        from visloc.data.scene.condition_steps import srgb_to_linear
        from visloc.data.scene.conditions import apply_conditions
        from visloc.data.scene.render import render
        from visloc.data.world.base import job_rng
        from visloc.utils.image_ops import LUMA_WEIGHTS

        tr = self.traversal
        frame = render(self.city, tr.K, tr.pose_at(t_us), size=tr.size)
        rng = job_rng(tr.seed, "drive-events", tr.split, t_us)
        rgb = apply_conditions(frame.image_float, self.condition, rng, frame.depth, camera=False)
        lum = srgb_to_linear(rgb).astype(np.float64) @ np.asarray(LUMA_WEIGHTS, np.float64)
        return np.clip(lum, 0.0, 1.0), frame.depth

    def _moved(self, depth: np.ndarray, t0: int, t1: int) -> float:
        tr = self.traversal
        return max_displacement(depth, tr.K, tr.pose_at(t0), tr.pose_at(t1), self.conf.flow_stride_px)

    def _next(self, t: int, end: int, depth: np.ndarray) -> tuple[int, float]:
        """The next frame time after ``t`` (at most ``end``) and the motion measured up to it."""
        probe = min(PROBE_US, end - t)
        rate = self._moved(depth, t, t + probe) / probe  # px per µs
        budget = self.conf.max_flow_px
        dt = self._max_dt if rate <= 0 else int(np.clip(budget / rate, MIN_STEP_US, self._max_dt))
        t1 = min(t + dt, end)
        moved = self._moved(depth, t, t1)
        if moved > budget and t1 - t > MIN_STEP_US:  # the first-order step overshot: shrink it once
            t1 = t + max(MIN_STEP_US, int((t1 - t) * budget / moved))
            moved = self._moved(depth, t, t1)
        return t1, moved

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[EventStream]:
        """Event chunks (one per rendered frame after the first) from pose ``start``'s time to pose ``stop - 1``'s.

        ``t`` of the chunks is relative to pose ``start``'s time (their ``origin_us`` is that time, on the
        traversal's clock). Frames fall between the poses where the motion needs them (poses interpolated:
        ``DriveTraversal.pose_at``); the last pose is always rendered, so the events cover the whole span.
        """
        tr = self.traversal
        stop = len(tr.t_us) if stop is None else min(stop, len(tr.t_us))
        if not 0 <= start < stop - 1:
            raise ValueError(f"chunks: need 0 <= start < stop - 1, got {start}, {stop}")
        sim = EventSimulator(tr.size, self.conf.esim)
        t, end = int(tr.t_us[start]), int(tr.t_us[stop - 1])
        lum, depth = self.light(t)
        sim.feed(lum, t)
        self.stats.frames += 1
        while t < end:
            t1, moved = self._next(t, end, depth)
            self.stats.flow_checked = max(self.stats.flow_checked, moved)
            self.stats.over_budget += moved > self.conf.max_flow_px
            lum, depth = self.light(t1)
            chunk = sim.feed(lum, t1)
            self.stats.frames += 1
            self.stats.events += len(chunk)
            t = t1
            yield chunk
        self.stats.duration_us = int(tr.t_us[stop - 1] - tr.t_us[start])


__all__ = ["DriveTraversal", "TraversalEvents", "WorldEventSource", "WorldEventsConf", "drive_traversals",
           "max_displacement", "read_traversal"]
