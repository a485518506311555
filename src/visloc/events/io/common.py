"""What every event-file reader shares: the error type, polarity detection, chunk building and joining.

Readers turn raw columns into ``EventStream`` chunks through ``EventStream.from_arrays`` (which does
every unit, polarity and range check); when it refuses a chunk, ``build_chunk`` finds the first
offending row and names it (``file:line`` for text, ``file (event i)`` for arrays), so every bad input
ends in one ``EventFileError`` line naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.errors import VislocError
from visloc.events.stream import EventStream, EventStreamError

#: how ``p`` is encoded in a file: ``"pm1"`` {-1, +1}, ``"01"`` {0, 1} (0 is negative), ``"auto"`` from the values
PolarityArg = Literal["auto", "pm1", "01"]
Encoding = Literal["pm1", "01"]
#: row index within a chunk -> where it is, e.g. ``"events.txt:17"`` or ``"data.hdf5 (event 1234)"``
Locate = Callable[[int], str]


class EventFileError(VislocError, ValueError):
    """An event or GPS file that is missing, unreadable or malformed; one line naming the file and the problem."""


def check_polarity_arg(polarity: str) -> None:
    """Raise ``ValueError`` (a program's mistake) unless ``polarity`` is ``"auto"``, ``"pm1"`` or ``"01"``."""
    if polarity not in ("auto", "pm1", "01"):
        raise ValueError(f"polarity: expected 'auto', 'pm1' or '01', got {polarity!r}")


class PolarityTracker:
    """Settles ``"auto"`` polarity over a file's chunks: all in {-1, +1} or all in {0, 1}, never mixed.

    A chunk of only ``1`` values settles nothing (both encodings read ``1`` as ``+1``).
    """

    def __init__(self, polarity: PolarityArg) -> None:
        check_polarity_arg(polarity)
        self.requested = polarity
        self.settled: Encoding | None = None if polarity == "auto" else polarity

    def encoding(self, p: np.ndarray, locate: Locate) -> Encoding:
        """The encoding of chunk ``p`` (``[N]``); ``EventFileError`` on values of neither or of both encodings."""
        if self.requested != "auto":
            return self.settled or "pm1"
        is_one, is_zero, is_neg = p == 1, p == 0, p == -1
        bad = ~(is_one | is_zero | is_neg)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise EventFileError(f"{locate(i)}: polarity {scalar(p[i])} is neither in {{-1, +1}} nor in {{0, 1}}")
        settled = self.settled
        if settled is None and np.any(is_zero) and np.any(is_neg):  # the encoding seen first wins
            settled = "01" if np.argmax(is_zero) < np.argmax(is_neg) else "pm1"
        other = is_neg if settled == "01" else is_zero
        if settled is not None and np.any(other):
            i = int(np.argmax(other))
            raise EventFileError(f"{locate(i)}: polarity {scalar(p[i])} after {_NAMES[settled]} polarities "
                                 "(two encodings mixed)")
        self.settled = settled or ("01" if np.any(is_zero) else "pm1" if np.any(is_neg) else None)
        return self.settled or "pm1"


_NAMES = {"pm1": "{-1, +1}", "01": "{0, 1}"}


def scalar(v: object) -> str:
    """A numpy or Python scalar as plain text (``2.0``, not ``np.float64(2.0)``)."""
    item = getattr(v, "item", None)
    return str(item() if callable(item) else v)


def first_bad_row(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, sensor_size: tuple[int, int],
                  encoding: Encoding) -> int | None:
    """The row that ``EventStream.from_arrays`` refused (``[N]`` raw columns), or None if none is found.

    Only the error path calls it, to name the row. The checks run in ``from_arrays``' order (times
    finite, coordinates integral, polarities in ``encoding``; then sorted times, coordinates inside the
    sensor), so the row found is one of the check whose message is shown.
    """
    tf = np.asarray(t, dtype=np.float64)
    xf, yf = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    allowed = (-1, 1) if encoding == "pm1" else (0, 1)
    unsorted = np.zeros(len(tf), bool)
    unsorted[1:] = tf[1:] < tf[:-1]
    masks = [~np.isfinite(tf), ~np.isfinite(xf) | (xf != np.round(xf)), ~np.isfinite(yf) | (yf != np.round(yf)),
             ~((p == allowed[0]) | (p == allowed[1])), unsorted, (xf < 0) | (xf >= sensor_size[0]),
             (yf < 0) | (yf >= sensor_size[1])]
    for bad in masks:
        if np.any(bad):
            return int(np.argmax(bad))
    return None


class ChunkBuilder:
    """Turns a file's raw column chunks into ``EventStream`` chunks on one origin, checking across chunks.

    Args:
        path: the file (for messages).
        sensor_size: ``(W, H)``.
        t_unit: ``"s"`` (float seconds) or ``"us"`` (integer µs) of the raw ``t``.
        polarity: the file's encoding, or ``"auto"``.
        origin_us: the absolute µs of ``t = 0``; default: the first event's time.
    """

    def __init__(self, path: str | Path, sensor_size: tuple[int, int], *, t_unit: Literal["s", "us"],
                 polarity: PolarityArg, origin_us: int | None = None) -> None:
        self.path = Path(path)
        self.sensor_size = sensor_size
        self.t_unit: Literal["s", "us"] = t_unit
        self.polarity = PolarityTracker(polarity)
        self.origin_us = origin_us
        self._last_t: int | None = None  # the previous chunk's last t (relative µs)

    def build(self, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, locate: Locate) -> EventStream:
        """One chunk (``[N]`` raw columns) as a stream; ``EventFileError`` naming the first bad row."""
        encoding = self.polarity.encoding(np.asarray(p), locate)
        try:
            chunk = EventStream.from_arrays(t, x, y, p, self.sensor_size, t_unit=self.t_unit, polarity=encoding,
                                            origin_us=self.origin_us)
        except EventStreamError as e:
            i = first_bad_row(t, x, y, p, self.sensor_size, encoding)
            raise EventFileError(f"{locate(i) if i is not None else self.path}: {e}") from None
        if self.origin_us is None and len(chunk):
            self.origin_us = chunk.origin_us
        if len(chunk):
            if self._last_t is not None and int(chunk.t[0]) < self._last_t:
                raise EventFileError(f"{locate(0)}: EventStream.t: not sorted (t = {int(chunk.t[0])} µs after "
                                     f"{self._last_t} µs, relative to the origin {self.origin_us} µs)")
            self._last_t = int(chunk.t[-1])
        return chunk


def empty_stream(sensor_size: tuple[int, int], origin_us: int = 0) -> EventStream:
    """A stream with no events."""
    z = np.zeros(0, np.int16)
    return EventStream(np.zeros(0, np.int64), z, z, np.zeros(0, np.int8), sensor_size, origin_us)


def concat_streams(chunks: Iterable[EventStream], sensor_size: tuple[int, int], origin_us: int | None = None,
                   where: str | Path = "events") -> EventStream:
    """Join consecutive chunks of one sensor into one stream (times re-based on the first chunk's origin).

    Raises:
        EventFileError: the chunks are of different sensors, or their times are not sorted across them.
    """
    parts = [c for c in chunks if len(c)]
    if not parts:
        return empty_stream(sensor_size, 0 if origin_us is None else origin_us)
    origin = parts[0].origin_us if origin_us is None else origin_us
    for c in parts:
        if c.sensor_size != sensor_size:
            raise EventFileError(f"{where}: a chunk of sensor {c.sensor_size}, expected {sensor_size}")
    ts = [c.t if c.origin_us == origin else c.t + np.int64(c.origin_us - origin) for c in parts]
    dtype = np.result_type(*(c.x.dtype for c in parts))
    try:
        return EventStream(np.concatenate(ts), np.concatenate([c.x for c in parts]).astype(dtype, copy=False),
                           np.concatenate([c.y for c in parts]).astype(dtype, copy=False),
                           np.concatenate([c.p for c in parts]), sensor_size, origin)
    except EventStreamError as e:
        raise EventFileError(f"{where}: {e}") from None
