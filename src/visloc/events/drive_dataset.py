"""An event drive folder, read for place recognition: traversals, places along the route, event windows.

A folder of the ``event-drive`` world kind (:mod:`visloc.pipelines.event_drive`), or any ``drive`` folder whose
traversals have an ``events.h5``::

    world.yaml, route.yaml            the drive generator's records (split, seed, camera, conditions)
    events.yaml                       the event simulation's record (written last; absent for a bare drive)
    <traversal>/events.h5             visloc event file (``events.io.h5``), t in µs from the traversal's start
    <traversal>/poses.csv             poses at ``pose_hz``: world ENU metres, UTM, lat / lon (``drive_io``)
    <traversal>/frames/, frames.txt   the rendered frames at ``render_hz`` (for frame baselines)

Places: a traversal is sampled every ``stride_m`` metres of travel (``Trajectory.arrival_time``), so that a
stopped vehicle gives one place, not many. At each place time ``t`` the window is the ``count`` events
before ``t`` (``kind = "count"``, robust to speed) or the events of ``[t - duration_us, t)``
(``kind = "duration"``); a place whose window would start before the first event is left out. Positions
are world ENU metres (x east, y north): a metric frame, as the retrieval thresholds need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.conf import ConfError
from visloc.data.world.drive_io import read_drive_yaml, read_frames_txt, read_poses_csv
from visloc.errors import InputError
from visloc.events.io.h5 import VislocEvents
from visloc.events.stream import EventStream
from visloc.events.windows import Trajectory

WindowKind = Literal["count", "duration"]


@dataclass(frozen=True)
class PlaceWindows:
    """How places are sampled and which events make a place's window.

    Attributes:
        stride_m: distance travelled between two places of one traversal (metres).
        kind: ``count`` (the last ``count`` events) or ``duration`` (the last ``duration_us``).
        count: events per window for ``kind = "count"``.
        duration_us: window length for ``kind = "duration"``.
    """

    stride_m: float = 2.0
    kind: WindowKind = "count"
    count: int = 30_000
    duration_us: int = 50_000

    def __post_init__(self) -> None:
        if not self.stride_m > 0:
            raise ConfError(f"PlaceWindows.stride_m: must be > 0, got {self.stride_m}")
        if self.kind not in ("count", "duration"):
            raise ConfError(f"PlaceWindows.kind: must be count or duration, got {self.kind!r}")
        if self.count < 1 or self.duration_us < 1:
            raise ConfError(f"PlaceWindows: count and duration_us must be >= 1, got {self.count}, {self.duration_us}")


@dataclass(frozen=True)
class Places:
    """The places of one traversal.

    ``t_us`` ``[P]``: window end times; ``xy`` ``[P, 2]``: positions (world metres); ``spans`` ``[P, 2]``: event
    index ranges ``[i0, i1)`` in the traversal's event file.
    """

    traversal: str
    t_us: np.ndarray
    xy: np.ndarray
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.t_us)


@dataclass(frozen=True)
class EventTraversal:
    """One traversal of an event drive folder.

    Attributes:
        name, condition: folder name and condition (``day``, ``dusk``, ``night`` ...).
        events: path of its event file.
        trajectory: camera centre positions (world x, y metres) at the pose times.
        frames: ``(t_us, name)`` of its rendered frames (names relative to the folder).
    """

    name: str
    condition: str
    events: Path
    trajectory: Trajectory
    frames: tuple[tuple[int, str], ...]

    def places(self, spec: PlaceWindows) -> Places:
        """The places of this traversal under ``spec`` (see the module docstring)."""
        traj = self.trajectory
        stops = np.arange(0.0, float(traj.distance[-1]) + 1e-9, spec.stride_m)
        t = np.rint(traj.arrival_time(stops)).astype(np.int64)
        f = VislocEvents(self.events)
        try:
            n = len(f)
            ends = np.array([f.index_range(0, int(ti))[1] for ti in t], dtype=np.int64)
            if spec.kind == "count":
                starts = ends - spec.count
            else:
                starts = np.array([f.index_range(int(ti) - spec.duration_us, int(ti))[0] for ti in t], np.int64)
            first = f.time_span_us()[0] if n else 0
        finally:
            f.close()
        ok = (starts >= 0) & (ends > starts) & (t - spec.duration_us >= first if spec.kind == "duration" else True)
        t, starts, ends = t[ok], starts[ok], ends[ok]
        return Places(self.name, t, traj.position_at(t), np.stack([starts, ends], axis=1))

    def read(self, places: Places, index: int) -> EventStream:
        """The events of place ``index``'s window (an ``EventStream`` with the file's origin)."""
        f = VislocEvents(self.events)
        try:
            i0, i1 = (int(v) for v in places.spans[index])
            return f.read_index(i0, i1)
        finally:
            f.close()


@dataclass(frozen=True)
class EventDrive:
    """An event drive folder: its split, seed, camera and traversals (those with an event file)."""

    root: Path
    split: str
    seed: int
    sensor_size: tuple[int, int]
    traversals: dict[str, EventTraversal]

    def __getitem__(self, name: str) -> EventTraversal:
        if name not in self.traversals:
            raise InputError(f"{self.root}: no traversal {name!r} with events (it has {', '.join(self.traversals)})")
        return self.traversals[name]


def read_event_drive(root: str | Path) -> EventDrive:
    """The event drive folder ``root`` (see the module docstring).

    Raises:
        InputError: not a drive folder, or no traversal with an ``events.h5``.
    """
    root = Path(root)
    world, route = read_drive_yaml(root / "world.yaml"), read_drive_yaml(root / "route.yaml")
    if world.get("kind") != "drive":
        raise InputError(f"{root / 'world.yaml'}: a world {world.get('kind')!r} dataset, not a drive")
    out = {}
    for t in route.get("traversals", []):
        name = str(t["name"])
        events = root / name / "events.h5"
        if not events.is_file():
            continue
        cols = read_poses_csv(root / name / "poses.csv")
        traj = Trajectory(cols["t_us"], np.stack([cols["x"], cols["y"]], axis=1))
        frames = tuple(read_frames_txt(root / name / "frames.txt"))
        out[name] = EventTraversal(name, str(t["condition"]), events, traj, frames)
    if not out:
        raise InputError(f"{root}: no traversal has an events.h5 (simulate them: visloc data world event-drive)")
    cam = route["camera"]
    return EventDrive(root, str(world["split"]), int(world["seed"]), (int(cam["width"]), int(cam["height"])), out)


__all__ = ["EventDrive", "EventTraversal", "PlaceWindows", "Places", "WindowKind", "read_event_drive"]
