"""Event window -> dense tensor representations, registered in ``REPRESENTATIONS`` (kind ``events``).

Each representation is a frozen conf plus a function ``(events, conf) -> [C, H, W]`` float32 and its
batched form ``(list of windows, conf) -> [B, C, H, W]`` (one scatter for the whole batch), with
``(H, W)`` the sensor's. None of them writes into the stream (its arrays are read-only views, and
the tensors are copies).

Times are taken relative to each window: a window's time range ``t_range = (t_start_us, t_end_us)``
(µs on the stream's clock, both ends inclusive) defaults to its first and last events' times, so
adding a constant to every ``t`` changes nothing. A window without events gives zeros.

- ``voxel-grid`` (Zhu et al. 2019 event volume): ``B`` temporal bins; each event adds its polarity
  to the two bins around its normalised time ``t*``, split linearly (``p (1 - frac)`` to
  ``floor(t*)``, ``p frac`` to ``floor(t*) + 1``; shares landing at bin ``>= B`` are dropped).
  Normalisations, by name:

  - ``"e2vid"``: ``t* = (B - 1) (t - t_start) / (t_end - t_start)`` (rpg_e2vid
    ``events_to_voxel_grid``). ``t*`` lies in ``[0, B - 1]``, so every event's polarity is kept:
    the grid sums to ``sum(p)``.
  - ``"tonic"``: ``t* = B (t - t_start) / (t_end - t_start)`` (tonic ``to_voxel_grid``, also evlib's).
    The event at ``t_end`` lands at ``t* = B`` and is dropped, and the right share of events with
    ``t* >= B - 1`` is dropped: the grid does not sum to ``sum(p)`` and the last bin is lighter.

  When ``t_end == t_start`` (one event, or all timestamps equal) every ``t*`` is 0: all the mass goes
  to bin 0, for both normalisations (rpg_e2vid divides by 1 there too; tonic gives NaN).
- ``histogram``: two channels, the count of positive (channel 0) and of negative (channel 1) events
  per pixel.
- ``time-surface``: per polarity (channel 0 positive, 1 negative), ``exp(-(t_end - t_last) / tau)``
  with ``t_last`` the time of the pixel's most recent event of that polarity; 0 where it has none.

The learnable EST layer (``est``) is an ``nn.Module`` registered beside these, in ``events.est``; it
gathers its windows with ``gather_windows`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.events.stream import EventStream
from visloc.registry import REPRESENTATIONS
from visloc.types import InputSpec

#: what a representation's sum over its output equals: ``"polarity"`` (``sum(p)``), ``"count"``
#: (the number of events), or None when nothing is conserved
Mass = Literal["polarity", "count"] | None
TimeRange = tuple[int, int]


@dataclass(frozen=True)
class VoxelGridConf:
    """``bins``: temporal bins ``B`` (the channels); ``normalization``: ``"e2vid"`` (B - 1) or ``"tonic"`` (B)."""

    bins: int = 5
    normalization: Literal["e2vid", "tonic"] = "e2vid"

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ConfError(f"voxel-grid.bins: must be >= 1, got {self.bins}")

    @property
    def channels(self) -> int:
        """``C = B``."""
        return self.bins

    @property
    def mass(self) -> Mass:
        """``"polarity"`` for ``e2vid``; nothing for ``tonic`` (it drops the last event)."""
        return "polarity" if self.normalization == "e2vid" else None

    def input_spec(self) -> InputSpec:
        """What an extractor over this representation declares."""
        return InputSpec(kind="events", channels=self.channels, representation="voxel-grid", bins=self.bins)


@dataclass(frozen=True)
class HistogramConf:
    """Counts of positive and negative events per pixel (no options)."""

    @property
    def channels(self) -> int:
        """``C = 2``."""
        return 2

    @property
    def mass(self) -> Mass:
        """The counts sum to the number of events."""
        return "count"

    def input_spec(self) -> InputSpec:
        """What an extractor over this representation declares (one temporal bin)."""
        return InputSpec(kind="events", channels=2, representation="histogram", bins=1)


@dataclass(frozen=True)
class TimeSurfaceConf:
    """``tau_us``: the decay time constant of ``exp(-(t_end - t_last) / tau)``, in µs."""

    tau_us: float = 50_000.0

    def __post_init__(self) -> None:
        if not self.tau_us > 0:
            raise ConfError(f"time-surface.tau_us: must be > 0, got {self.tau_us}")
        ranges.above(self, 0, "tau_us")  # inf: a surface of ones

    @property
    def channels(self) -> int:
        """``C = 2``."""
        return 2

    @property
    def mass(self) -> Mass:
        """Nothing is conserved."""
        return None

    def input_spec(self) -> InputSpec:
        """What an extractor over this representation declares (one temporal bin)."""
        return InputSpec(kind="events", channels=2, representation="time-surface", bins=1)


@dataclass(frozen=True)
class EventBatch:
    """The events of ``n`` windows, concatenated (``gather_windows``).

    Attributes:
        rel: ``[N]`` int64 µs ``t - t_start`` of each event's window.
        x: ``[N]`` int64 pixel columns.
        y: ``[N]`` int64 pixel rows.
        p: ``[N]`` float32 polarities in ``{-1, +1}``.
        b: ``[N]`` int64 index of each event's window in ``[0, n)``.
        span: ``[n]`` int64 µs ``t_end - t_start`` of each window.
        n: the number of windows.
        width: the sensor's ``W``.
        height: the sensor's ``H``.
    """

    rel: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    p: torch.Tensor
    b: torch.Tensor
    span: torch.Tensor
    n: int
    width: int
    height: int


def _time_range(events: EventStream, t_range: TimeRange | None) -> TimeRange:
    if t_range is None:
        return (int(events.t[0]), int(events.t[-1])) if len(events) else (0, 0)
    t0, t1 = int(t_range[0]), int(t_range[1])
    if t1 < t0 or (len(events) and (int(events.t[0]) < t0 or int(events.t[-1]) > t1)):
        raise ValueError(f"t_range: ({t0}, {t1}) must contain the window's events "
                         f"[{int(events.t[0]) if len(events) else '-'}, {int(events.t[-1]) if len(events) else '-'}]")
    return t0, t1


def gather_windows(windows: Sequence[EventStream], t_ranges: Sequence[TimeRange | None] | None,
                   device: torch.device | str) -> EventBatch:
    """The events of ``windows`` (one sensor) on ``device``, times relative to each window's ``t_range``.

    Raises:
        ValueError: no windows, mixed sensor sizes, as many ranges as windows, or a range that does not
            contain its window's events.
    """
    if not windows:
        raise ValueError("windows: expected at least one window")
    size = windows[0].sensor_size
    if any(w.sensor_size != size for w in windows):
        raise ValueError(f"windows: all must share one sensor_size, got {sorted({w.sensor_size for w in windows})}")
    ranges = [None] * len(windows) if t_ranges is None else list(t_ranges)
    if len(ranges) != len(windows):
        raise ValueError(f"t_ranges: {len(ranges)} ranges for {len(windows)} windows")
    parts, spans = [], []
    for i, (w, r) in enumerate(zip(windows, ranges, strict=True)):
        t0, t1 = _time_range(w, r)
        ev = w.to_torch(device)
        parts.append((ev.t - t0, ev.x, ev.y, ev.p, torch.full_like(ev.t, i)))
        spans.append(t1 - t0)
    rel, x, y, p, b = (torch.cat(c) for c in zip(*parts, strict=True))
    return EventBatch(rel, x, y, p, b, torch.tensor(spans, dtype=torch.int64, device=device), len(windows), *size)


def _voxel(ev: EventBatch, conf: VoxelGridConf) -> torch.Tensor:
    nb, h, w = conf.bins, ev.height, ev.width
    scale = nb - 1 if conf.normalization == "e2vid" else nb
    span = ev.span[ev.b].double()
    tn = torch.where(span > 0, ev.rel.double() / span.clamp(min=1), torch.zeros_like(span))  # equal t: bin 0
    ts = tn * scale
    left = ts.floor().long()
    frac = (ts - left).float()
    out = torch.zeros(ev.n * nb * h * w, dtype=torch.float32, device=ev.rel.device)
    pix = ev.y * w + ev.x
    for bin_, value in ((left, ev.p * (1 - frac)), (left + 1, ev.p * frac)):
        keep = bin_ < nb
        out.index_add_(0, ((ev.b * nb + bin_) * (h * w) + pix)[keep], value[keep])
    return out.view(ev.n, nb, h, w)


def _histogram(ev: EventBatch, conf: HistogramConf) -> torch.Tensor:
    h, w = ev.height, ev.width
    channel = (ev.p < 0).long()
    out = torch.zeros(ev.n * 2 * h * w, dtype=torch.float32, device=ev.rel.device)
    out.index_add_(0, ((ev.b * 2 + channel) * h + ev.y) * w + ev.x, torch.ones_like(ev.p))
    return out.view(ev.n, 2, h, w)


def _time_surface(ev: EventBatch, conf: TimeSurfaceConf) -> torch.Tensor:
    h, w = ev.height, ev.width
    channel = (ev.p < 0).long()
    last = torch.full((ev.n * 2 * h * w,), -1, dtype=torch.int64, device=ev.rel.device)  # -1: no event
    last.scatter_reduce_(0, ((ev.b * 2 + channel) * h + ev.y) * w + ev.x, ev.rel, reduce="amax")
    last = last.view(ev.n, 2, h, w)
    age = (ev.span.view(-1, 1, 1, 1) - last).double()  # t_end - t_last, both relative to t_start
    surface = torch.exp(-age / conf.tau_us)
    return torch.where(last >= 0, surface, torch.zeros_like(surface)).float()


Windows = Sequence[EventStream]
TimeRanges = Sequence[TimeRange | None] | None
Device = torch.device | str


def voxel_grid(events: EventStream, conf: VoxelGridConf, t_range: TimeRange | None = None,
               device: Device = "cpu") -> torch.Tensor:
    """``[B, H, W]`` float32 voxel grid of one window (see the module docstring)."""
    return _voxel(gather_windows([events], [t_range], device), conf)[0]


def voxel_grid_batch(windows: Windows, conf: VoxelGridConf, t_ranges: TimeRanges = None,
                     device: Device = "cpu") -> torch.Tensor:
    """``[N, B, H, W]`` voxel grids of ``N`` windows of one sensor."""
    return _voxel(gather_windows(windows, t_ranges, device), conf)


def histogram(events: EventStream, conf: HistogramConf, t_range: TimeRange | None = None,
              device: Device = "cpu") -> torch.Tensor:
    """``[2, H, W]`` float32 counts (positive, negative) of one window."""
    return _histogram(gather_windows([events], [t_range], device), conf)[0]


def histogram_batch(windows: Windows, conf: HistogramConf, t_ranges: TimeRanges = None,
                    device: Device = "cpu") -> torch.Tensor:
    """``[N, 2, H, W]`` counts of ``N`` windows of one sensor."""
    return _histogram(gather_windows(windows, t_ranges, device), conf)


def time_surface(events: EventStream, conf: TimeSurfaceConf, t_range: TimeRange | None = None,
                 device: Device = "cpu") -> torch.Tensor:
    """``[2, H, W]`` float32 time surface (positive, negative) of one window, at ``t_end``."""
    return _time_surface(gather_windows([events], [t_range], device), conf)[0]


def time_surface_batch(windows: Windows, conf: TimeSurfaceConf, t_ranges: TimeRanges = None,
                       device: Device = "cpu") -> torch.Tensor:
    """``[N, 2, H, W]`` time surfaces of ``N`` windows of one sensor."""
    return _time_surface(gather_windows(windows, t_ranges, device), conf)


class Representation:
    """A built representation: ``rep(events) -> [C, H, W]``, ``rep.batch(windows) -> [N, C, H, W]``.

    Args:
        name: its registered name.
        conf: its conf (``channels``, ``mass`` and ``input_spec()`` come from it).
        fn: the batched kernel ``(EventBatch, conf) -> [N, C, H, W]``.
    """

    def __init__(self, name: str, conf: VoxelGridConf | HistogramConf | TimeSurfaceConf,
                 fn: Callable[[EventBatch, Any], torch.Tensor]) -> None:
        self.name = name
        self.conf = conf
        self._fn = fn

    @property
    def channels(self) -> int:
        """``C``."""
        return self.conf.channels

    @property
    def mass(self) -> Mass:
        """What the output's sum equals (see ``Mass``)."""
        return self.conf.mass

    def input_spec(self) -> InputSpec:
        """``InputSpec(kind="events", channels=C, representation=name, bins=...)``."""
        return self.conf.input_spec()

    def __call__(self, events: EventStream, t_range: TimeRange | None = None, device: Device = "cpu") -> torch.Tensor:
        """``[C, H, W]`` float32 of one window (``t_range``: see the module docstring)."""
        return self._fn(gather_windows([events], [t_range], device), self.conf)[0]

    def batch(self, windows: Windows, t_ranges: TimeRanges = None, device: Device = "cpu") -> torch.Tensor:
        """``[N, C, H, W]`` float32 of ``N`` windows of one sensor, in one scatter."""
        return self._fn(gather_windows(windows, t_ranges, device), self.conf)

    def __repr__(self) -> str:
        return f"Representation({self.name!r}, {self.conf})"


REPRESENTATIONS.register("voxel-grid", VoxelGridConf(),
                         lambda c: Representation("voxel-grid", c, _voxel))
REPRESENTATIONS.register("histogram", HistogramConf(),
                         lambda c: Representation("histogram", c, _histogram))
REPRESENTATIONS.register("time-surface", TimeSurfaceConf(),
                         lambda c: Representation("time-surface", c, _time_surface))
