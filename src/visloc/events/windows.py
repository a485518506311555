"""Windows over an ``EventStream``: a fixed event count, a fixed duration, or a fixed distance travelled.

Every window is ``(i0, i1, t0_us, t1_us)``: the events ``i0 .. i1 - 1`` of the stream (authoritative)
and the half-open time span ``[t0_us, t1_us)`` it covers, in µs relative to the stream's origin.
Consecutive windows start ``stride`` apart (events, µs or metres), so ``overlap = size - stride``.

With a ``Trajectory`` (positions as a function of time), each window also records its position,
linearly interpolated at the window's centre time ``(t0_us + t1_us) / 2``.

Windows that cannot be produced are *reported* in ``WindowSet.skipped`` with a reason, never returned
as empty windows:

- ``"empty"``: a time or distance window with no events;
- ``"partial"``: the tail of the stream, shorter than one window;
- ``"stationary"``: a distance window longer than ``max_duration_us`` (the vehicle stopped inside it);
- ``"outside-trajectory"``: a window whose centre time lies outside the trajectory's times.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from visloc.events.stream import EventStream

SkipReason = Literal["empty", "partial", "stationary", "outside-trajectory"]


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Planar positions as a function of time.

    Attributes:
        times_us: ``[K]`` int64 µs on the stream's clock (relative to its ``origin_us``), strictly
            increasing.
        positions: ``[K, 2]`` float64 metres in a metric frame (UTM easting/northing or a local map
            frame; never raw latitude/longitude).
    """

    times_us: np.ndarray
    positions: np.ndarray
    # Derived in __post_init__ (cumulative metres, read-only); exposed as ``distance``.
    _distance: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.times_us)
        pos = np.asarray(self.positions, dtype=np.float64)
        if t.ndim != 1 or len(t) < 2 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"Trajectory.times_us: expected [K >= 2] integer µs, got {t.dtype}{t.shape}")
        if np.any(np.diff(t) <= 0):
            raise ValueError("Trajectory.times_us: must be strictly increasing")
        if pos.shape != (len(t), 2) or not np.all(np.isfinite(pos)):
            raise ValueError(f"Trajectory.positions: expected finite [K={len(t)}, 2] metres, got {pos.shape}")
        step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        for name, value in (("times_us", t.astype(np.int64)), ("positions", pos),
                            ("_distance", np.concatenate([[0.0], np.cumsum(step)]))):
            value = value.view()
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @property
    def distance(self) -> np.ndarray:
        """``[K]`` cumulative distance travelled (metres) at each sample (non-decreasing, 0 first)."""
        return self._distance

    def covers(self, t_us: np.ndarray | float) -> np.ndarray:
        """Whether each time lies in ``[times_us[0], times_us[-1]]``."""
        t = np.asarray(t_us, dtype=np.float64)
        return (t >= self.times_us[0]) & (t <= self.times_us[-1])

    def position_at(self, t_us: np.ndarray | float) -> np.ndarray:
        """``[..., 2]`` positions (metres), linearly interpolated (clamped outside the samples)."""
        t = np.asarray(t_us, dtype=np.float64)
        ts = self.times_us.astype(np.float64)
        return np.stack([np.interp(t, ts, self.positions[:, 0]), np.interp(t, ts, self.positions[:, 1])], -1)

    def distance_at(self, t_us: np.ndarray | float) -> np.ndarray:
        """Cumulative distance (metres) travelled at each time (clamped outside the samples)."""
        return np.interp(np.asarray(t_us, dtype=np.float64), self.times_us.astype(np.float64), self.distance)

    def arrival_time(self, s: np.ndarray) -> np.ndarray:
        """First time (float µs) the cumulative distance reaches each ``s``."""
        d, t = self.distance, self.times_us.astype(np.float64)
        j = np.clip(np.searchsorted(d, s, side="left"), 1, len(d) - 1)
        return _lerp(s, d[j - 1], d[j], t[j - 1], t[j], flat=0.0)

    def departure_time(self, s: np.ndarray) -> np.ndarray:
        """Last time (float µs) the cumulative distance is still ``s`` (when the vehicle leaves it)."""
        d, t = self.distance, self.times_us.astype(np.float64)
        j = np.clip(np.searchsorted(d, s, side="right"), 1, len(d) - 1)
        return _lerp(s, d[j - 1], d[j], t[j - 1], t[j], flat=1.0)


def _lerp(s: np.ndarray, d0: np.ndarray, d1: np.ndarray, t0: np.ndarray, t1: np.ndarray, flat: float) -> np.ndarray:
    """Time at distance ``s`` on segments ``(d0, t0) -> (d1, t1)``; a flat (stopped) one gives ``flat`` of it."""
    span = d1 - d0
    w = np.divide(s - d0, span, out=np.full_like(span, flat), where=span > 0)
    return t0 + np.clip(w, 0.0, 1.0) * (t1 - t0)


@dataclass(frozen=True)
class Window:
    """One window: events ``i0 .. i1 - 1`` covering ``[t0_us, t1_us)`` (µs relative to the origin).

    Attributes:
        position: ``(x, y)`` metres at the centre time, when a trajectory was given.
    """

    i0: int
    i1: int
    t0_us: int
    t1_us: int
    position: tuple[float, float] | None = None

    @property
    def num_events(self) -> int:
        """``i1 - i0``."""
        return self.i1 - self.i0

    @property
    def duration_us(self) -> int:
        """``t1_us - t0_us``."""
        return self.t1_us - self.t0_us

    @property
    def centre_us(self) -> float:
        """``(t0_us + t1_us) / 2``, the time its position is interpolated at."""
        return (self.t0_us + self.t1_us) / 2

    @property
    def t_range(self) -> tuple[int, int]:
        """``(t0_us, t1_us - 1)``: the span with both ends inclusive, as representations take it."""
        return self.t0_us, self.t1_us - 1

    def events(self, stream: EventStream) -> EventStream:
        """The window's events of ``stream``, as views."""
        return stream.slice_index(self.i0, self.i1)


@dataclass(frozen=True)
class SkippedWindow:
    """A window that was not produced, and why (see the module docstring)."""

    i0: int
    i1: int
    t0_us: int
    t1_us: int
    reason: SkipReason


@dataclass(frozen=True)
class WindowSet:
    """The windows produced, in time order, and the ones skipped."""

    windows: tuple[Window, ...]
    skipped: tuple[SkippedWindow, ...] = ()

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[Window]:
        return iter(self.windows)

    def __getitem__(self, i: int) -> Window:
        return self.windows[i]

    def events(self, stream: EventStream) -> list[EventStream]:
        """Each window's events, as views (the input of a representation's batched form)."""
        return [w.events(stream) for w in self.windows]

    def t_ranges(self) -> list[tuple[int, int]]:
        """Each window's ``t_range`` (normalise a representation over the window's span, not its events')."""
        return [w.t_range for w in self.windows]


def _positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


def _finish(spans: list[tuple[int, int, int, int]], trajectory: Trajectory | None,
            skipped: list[SkippedWindow]) -> WindowSet:
    """Attach positions, and report the spans without events or outside the trajectory."""
    windows = []
    for i0, i1, t0, t1 in spans:
        if i1 <= i0:
            skipped.append(SkippedWindow(i0, i1, t0, t1, "empty"))
            continue
        position = None
        if trajectory is not None:
            centre = (t0 + t1) / 2
            if not trajectory.covers(centre):
                skipped.append(SkippedWindow(i0, i1, t0, t1, "outside-trajectory"))
                continue
            px, py = trajectory.position_at(centre)
            position = (float(px), float(py))
        windows.append(Window(i0, i1, t0, t1, position))
    skipped.sort(key=lambda s: (s.t0_us, s.i0))
    return WindowSet(tuple(windows), tuple(skipped))


def count_windows(stream: EventStream, count: int, *, stride: int | None = None,
                  trajectory: Trajectory | None = None) -> WindowSet:
    """Windows of exactly ``count`` events, starting every ``stride`` events (default ``count``).

    A window covers ``[t[i0], t[i1 - 1] + 1)``. The events after the last full window are reported
    as one ``"partial"`` skip.
    """
    _positive(count, "count_windows: count")
    stride = count if stride is None else stride
    _positive(stride, "count_windows: stride")
    n, t = len(stream), stream.t
    starts = np.arange(0, max(n - count + 1, 0), stride)
    spans = [(int(i), int(i) + count, int(t[i]), int(t[i + count - 1]) + 1) for i in starts]
    skipped = []
    tail = int(starts[-1]) + stride if len(starts) else 0
    if tail < n:
        skipped.append(SkippedWindow(tail, n, int(t[tail]), int(t[-1]) + 1, "partial"))
    return _finish(spans, trajectory, skipped)


def time_windows(stream: EventStream, duration_us: int, *, stride_us: int | None = None,
                 trajectory: Trajectory | None = None) -> WindowSet:
    """Windows ``[t0, t0 + duration_us)`` with ``t0 = t[0] + k * stride_us`` (default ``duration_us``).

    Only windows inside ``[t[0], t[-1] + 1)`` are produced; a shorter tail is a ``"partial"`` skip and
    a window with no events an ``"empty"`` one.
    """
    _positive(duration_us, "time_windows: duration_us")
    stride_us = duration_us if stride_us is None else stride_us
    _positive(stride_us, "time_windows: stride_us")
    if not len(stream):
        return WindowSet(())
    first, end = int(stream.t[0]), int(stream.t[-1]) + 1
    starts = np.arange(first, end - duration_us + 1, stride_us, dtype=np.int64)
    i0 = np.searchsorted(stream.t, starts, side="left")
    i1 = np.searchsorted(stream.t, starts + duration_us, side="left")
    spans = [(int(a), int(b), int(s), int(s) + duration_us) for a, b, s in zip(i0, i1, starts, strict=True)]
    skipped = []
    tail = int(starts[-1]) + stride_us if len(starts) else first
    if tail < end:
        j = int(np.searchsorted(stream.t, tail, side="left"))
        if j < len(stream):
            skipped.append(SkippedWindow(j, len(stream), tail, end, "partial"))
    return _finish(spans, trajectory, skipped)


def distance_windows(stream: EventStream, trajectory: Trajectory, distance_m: float, *,
                     stride_m: float | None = None, max_duration_us: int = 1_000_000) -> WindowSet:
    """Windows over which the vehicle travels ``distance_m``, starting every ``stride_m`` metres.

    Window ``k`` spans the shortest time in which the travelled distance goes from
    ``s_k = s(t_first) + k * stride_m`` to ``s_k + distance_m``: it starts when the vehicle *last*
    leaves ``s_k`` and ends when it *first* reaches ``s_k + distance_m`` (times rounded to µs). So a
    stop at a window's boundary adds nothing to it. **The stopped-vehicle rule:** a stop inside a
    window would stretch it over the whole stop (seconds of noise events), so a window longer than
    ``max_duration_us`` is not produced; it is reported as a ``"stationary"`` skip, and the windows
    on either side of the stop are unaffected. Only the stream's time covered by the trajectory is
    windowed; the travelled distance is the polyline length of ``trajectory.positions``.
    """
    _positive(distance_m, "distance_windows: distance_m")
    stride_m = distance_m if stride_m is None else stride_m
    _positive(stride_m, "distance_windows: stride_m")
    _positive(max_duration_us, "distance_windows: max_duration_us")
    if not len(stream):
        return WindowSet(())
    lo = max(float(stream.t[0]), float(trajectory.times_us[0]))
    hi = min(float(stream.t[-1]), float(trajectory.times_us[-1]))
    if hi < lo:
        return WindowSet((), (SkippedWindow(0, len(stream), int(stream.t[0]), int(stream.t[-1]) + 1,
                                            "outside-trajectory"),))
    s_lo, s_hi = float(trajectory.distance_at(lo)), float(trajectory.distance_at(hi))
    starts = s_lo + stride_m * np.arange(int(np.floor((s_hi - s_lo - distance_m) / stride_m + 1e-9)) + 1)
    t0 = np.maximum(np.rint(trajectory.departure_time(starts)), lo).astype(np.int64)
    t1 = np.rint(trajectory.arrival_time(starts + distance_m)).astype(np.int64)
    i0 = np.searchsorted(stream.t, t0, side="left")
    i1 = np.searchsorted(stream.t, t1, side="left")
    spans, skipped = [], []
    for a, b, ta, tb in zip(i0, i1, t0, t1, strict=True):
        if tb - ta > max_duration_us:
            skipped.append(SkippedWindow(int(a), int(b), int(ta), int(tb), "stationary"))
        else:
            spans.append((int(a), int(b), int(ta), int(tb)))
    return _finish(spans, trajectory, skipped)
