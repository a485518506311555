"""``EventStream``: a sorted, validated, read-only stream of camera events.

Conventions (``DESIGN.md``, ``REVIEW.md`` section 4.2):

- ``t`` is ``int64`` microseconds relative to ``origin_us``, the absolute time (``int64`` µs on the
  recording's clock, e.g. ROS epoch) of ``t = 0``; it is sorted (non-decreasing);
- ``x`` (column) and ``y`` (row) are integer pixels with ``0 <= x < W`` and ``0 <= y < H``;
- ``p`` is ``int8`` in ``{-1, +1}`` (never ``{0, 1}``: ``from_arrays`` converts explicitly);
- ``sensor_size`` is ``(W, H)``.

The stream stores read-only views of the arrays it is given, so neither the stream nor anything
that takes it (windows, representations) can write into the caller's data; slices are views too
(``searchsorted`` bounds, no copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from visloc.errors import VislocError

_COORD_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.int32))
_US_PER_S = 1_000_000


class EventStreamError(VislocError, ValueError):
    """Events that break the stream's contract (unsorted ``t``, a pixel outside the sensor...)."""


@dataclass(frozen=True)
class TorchEvents:
    """A stream's arrays as torch tensors, for the representations.

    Attributes:
        t: ``[N]`` int64 µs relative to the stream's origin.
        x: ``[N]`` int64 pixel columns.
        y: ``[N]`` int64 pixel rows.
        p: ``[N]`` float32 polarities in ``{-1, +1}``.
    """

    t: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    p: torch.Tensor


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False  # the view's flag only: the caller's array stays writeable
    return v


@dataclass(frozen=True, eq=False)
class EventStream:
    """Events of one sensor, sorted by time.

    Attributes:
        t: ``[N]`` int64 µs relative to ``origin_us``, non-decreasing.
        x: ``[N]`` int16, uint16 or int32 pixel columns in ``[0, W)``.
        y: ``[N]`` same dtype rules, pixel rows in ``[0, H)``.
        p: ``[N]`` int8 polarities in ``{-1, +1}``.
        sensor_size: ``(W, H)`` in pixels.
        origin_us: absolute time of ``t = 0`` (int µs on the recording's clock).

    Raises:
        EventStreamError: (a ``ValueError``) naming the field that breaks the contract.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    sensor_size: tuple[int, int]
    origin_us: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        w, h = self.sensor_size
        n = len(self.t)
        if n and np.any(self.t[1:] < self.t[:-1]):
            i = int(np.argmax(self.t[1:] < self.t[:-1]))
            raise EventStreamError(f"EventStream.t: not sorted (t[{i + 1}] = {self.t[i + 1]} < t[{i}] = {self.t[i]})")
        for name, arr, size in (("x", self.x, w), ("y", self.y, h)):
            if n and (int(arr.min()) < 0 or int(arr.max()) >= size):
                raise EventStreamError(f"EventStream.{name}: values in [{int(arr.min())}, {int(arr.max())}] "
                                       f"outside the sensor's [0, {size})")
        if n and not np.all((self.p == 1) | (self.p == -1)):
            bad = sorted({int(v) for v in np.unique(self.p)} - {-1, 1})
            raise EventStreamError(f"EventStream.p: polarities must be -1 or +1, got {bad}")
        for name, arr in (("t", self.t), ("x", self.x), ("y", self.y), ("p", self.p)):
            object.__setattr__(self, name, _readonly(arr))

    def _check_types(self) -> None:
        if (not isinstance(self.sensor_size, tuple) or len(self.sensor_size) != 2
                or any(not isinstance(v, (int, np.integer)) or v < 1 for v in self.sensor_size)):
            raise EventStreamError(f"EventStream.sensor_size: expected (W, H) ints >= 1, got {self.sensor_size!r}")
        object.__setattr__(self, "sensor_size", (int(self.sensor_size[0]), int(self.sensor_size[1])))
        if not isinstance(self.origin_us, (int, np.integer)) or isinstance(self.origin_us, bool):
            raise EventStreamError(f"EventStream.origin_us: expected an int (µs), got {self.origin_us!r}")
        object.__setattr__(self, "origin_us", int(self.origin_us))
        arrays = {"t": self.t, "x": self.x, "y": self.y, "p": self.p}
        for name, arr in arrays.items():
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise EventStreamError(f"EventStream.{name}: expected a 1-D numpy array, got "
                                       f"{type(arr).__name__}{getattr(arr, 'shape', '')}")
        if self.t.dtype != np.int64:
            raise EventStreamError(f"EventStream.t: expected int64 µs, got {self.t.dtype} "
                                   "(use EventStream.from_arrays to convert)")
        for name in ("x", "y"):
            if arrays[name].dtype not in _COORD_DTYPES:
                raise EventStreamError(f"EventStream.{name}: expected int16, uint16 or int32, got "
                                       f"{arrays[name].dtype}")
        if self.p.dtype != np.int8:
            raise EventStreamError(f"EventStream.p: expected int8 in {{-1, +1}}, got {self.p.dtype}")
        lengths = {name: len(arr) for name, arr in arrays.items()}
        if len(set(lengths.values())) != 1:
            odd = [k for k, v in lengths.items() if v != lengths["t"]]
            raise EventStreamError(f"EventStream.{odd[0]}: length {lengths[odd[0]]} differs from t's {lengths['t']}")

    @classmethod
    def from_arrays(cls, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                    sensor_size: tuple[int, int], *, t_unit: Literal["us", "s"] = "us",
                    polarity: Literal["pm1", "01"] = "pm1", origin_us: int | None = None) -> EventStream:
        """Build a stream, converting units and polarities explicitly (the inputs are not modified).

        Args:
            t: ``[N]`` absolute times on the recording's clock, in ``t_unit``: ``"us"`` integers (floats
                must be integral) or ``"s"`` floats (e.g. MVSEC's ROS epoch seconds).
            x: ``[N]`` integral pixel columns (floats allowed when integral: MVSEC stores float64).
            y: ``[N]`` integral pixel rows.
            p: ``[N]`` polarities, in ``{-1, +1}`` for ``"pm1"`` or in ``{0, 1}`` for ``"01"``
                (0 becomes -1).
            sensor_size: ``(W, H)``.
            t_unit: the unit of ``t``.
            polarity: the encoding of ``p``.
            origin_us: the absolute time (µs) of ``t = 0``; default: the first event's time (0 when empty).

        Seconds become microseconds as ``floor(t) * 10**6 + round((t - floor(t)) * 10**6)``: the split
        keeps every µs value that float64 represents to better than 0.5 µs exact (absolute epoch
        seconds ~1.5e9 have a float64 spacing of ~0.24 µs).
        """
        t_abs = _to_us(np.asarray(t), t_unit)
        origin = (int(t_abs[0]) if len(t_abs) else 0) if origin_us is None else int(origin_us)
        w, h = sensor_size
        coord = np.int16 if max(w, h) <= np.iinfo(np.int16).max else np.int32
        return cls(t_abs - origin, _integral(np.asarray(x), "x", coord), _integral(np.asarray(y), "y", coord),
                   _polarity(np.asarray(p), polarity), (w, h), origin)

    def _view(self, i0: int, i1: int) -> EventStream:
        """Events ``[i0, i1)`` as views; skips re-validation (a slice of a valid stream is valid)."""
        out = object.__new__(EventStream)
        for name in ("t", "x", "y", "p"):
            object.__setattr__(out, name, getattr(self, name)[i0:i1])
        object.__setattr__(out, "sensor_size", self.sensor_size)
        object.__setattr__(out, "origin_us", self.origin_us)
        return out

    def index_range(self, t0_us: int, t1_us: int) -> tuple[int, int]:
        """``(i0, i1)`` of the events with ``t0_us <= t < t1_us`` (µs relative to the origin)."""
        if t1_us < t0_us:
            raise ValueError(f"EventStream.index_range: t1_us = {t1_us} < t0_us = {t0_us}")
        i0, i1 = np.searchsorted(self.t, [t0_us, t1_us], side="left")
        return int(i0), int(i1)

    def slice_time(self, t0_us: int, t1_us: int) -> EventStream:
        """The events with ``t0_us <= t < t1_us`` (µs relative to the origin), as views."""
        return self._view(*self.index_range(t0_us, t1_us))

    def slice_index(self, i0: int, i1: int) -> EventStream:
        """Events ``i0 .. i1 - 1``, as views; ``0 <= i0 <= i1 <= N`` (no negative indices)."""
        if not 0 <= i0 <= i1 <= len(self):
            raise ValueError(f"EventStream.slice_index: need 0 <= i0 <= i1 <= {len(self)}, got ({i0}, {i1})")
        return self._view(i0, i1)

    def shifted(self, dt_us: int) -> EventStream:
        """The same events with ``dt_us`` added to every ``t`` (and the origin moved back by it).

        The absolute times are unchanged; this copies ``t`` only.
        """
        return EventStream(self.t + np.int64(dt_us), self.x, self.y, self.p, self.sensor_size,
                           self.origin_us - int(dt_us))

    @property
    def duration_us(self) -> int:
        """``t[-1] - t[0]`` (0 for fewer than two events)."""
        return int(self.t[-1] - self.t[0]) if len(self) else 0

    @property
    def width(self) -> int:
        """``W``."""
        return self.sensor_size[0]

    @property
    def height(self) -> int:
        """``H``."""
        return self.sensor_size[1]

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def __repr__(self) -> str:
        return (f"EventStream(N={len(self)}, sensor_size={self.sensor_size}, origin_us={self.origin_us}, "
                f"duration_us={self.duration_us})")

    def to_torch(self, device: torch.device | str = "cpu") -> TorchEvents:
        """Copies of the arrays as tensors on ``device`` (``t``, ``x``, ``y`` int64; ``p`` float32)."""
        def conv(a: np.ndarray, dtype: type) -> torch.Tensor:
            return torch.from_numpy(a.astype(dtype)).to(device)  # astype copies: the stream stays untouched

        return TorchEvents(conv(self.t, np.int64), conv(self.x, np.int64), conv(self.y, np.int64),
                           conv(self.p, np.float32))


def seconds_to_us(t: np.ndarray) -> np.ndarray:
    """``[N]`` int64 µs of ``[N]`` finite seconds, exactly as ``EventStream.from_arrays(t_unit="s")`` converts."""
    return _to_us(np.asarray(t), "s")


def _to_us(t: np.ndarray, unit: str) -> np.ndarray:
    if t.ndim != 1:
        raise EventStreamError(f"EventStream.t: expected [N], got shape {t.shape}")
    if unit == "s":
        if not np.issubdtype(t.dtype, np.floating) and not np.issubdtype(t.dtype, np.integer):
            raise EventStreamError(f"EventStream.t: seconds must be numbers, got {t.dtype}")
        ts = t.astype(np.float64)
        if not np.all(np.isfinite(ts)):
            raise EventStreamError("EventStream.t: seconds must be finite")
        whole = np.floor(ts)
        return whole.astype(np.int64) * _US_PER_S + np.rint((ts - whole) * _US_PER_S).astype(np.int64)
    if unit == "us":
        return _integral(t, "t", np.int64)
    raise EventStreamError(f"EventStream.from_arrays: t_unit must be 'us' or 's', got {unit!r}")


def _integral(a: np.ndarray, name: str, dtype: type) -> np.ndarray:
    if a.ndim != 1:
        raise EventStreamError(f"EventStream.{name}: expected [N], got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise EventStreamError(f"EventStream.{name}: float values must be integral")
    elif not np.issubdtype(a.dtype, np.integer):
        raise EventStreamError(f"EventStream.{name}: expected integers, got {a.dtype}")
    info = np.iinfo(dtype)
    if len(a) and (a.min() < info.min or a.max() > info.max):
        raise EventStreamError(f"EventStream.{name}: values outside {np.dtype(dtype).name}")
    return a.astype(dtype)


def _polarity(p: np.ndarray, encoding: str) -> np.ndarray:
    if p.ndim != 1:
        raise EventStreamError(f"EventStream.p: expected [N], got shape {p.shape}")
    if encoding == "pm1":
        allowed = (-1, 1)
    elif encoding == "01":
        allowed = (0, 1)
    else:
        raise EventStreamError(f"EventStream.from_arrays: polarity must be 'pm1' or '01', got {encoding!r}")
    ok = (p == allowed[0]) | (p == allowed[1])
    if not np.all(ok):
        bad = sorted({float(v) for v in np.unique(p[~ok])})
        raise EventStreamError(f"EventStream.p: {encoding!r} polarities must be in {allowed}, got {bad}")
    out = p.astype(np.int8)
    if encoding == "01":
        out = np.where(out == 0, np.int8(-1), np.int8(1)).astype(np.int8)
    return out
