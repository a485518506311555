"""Lazy HDF5 event readers: open with one-line errors, probe keys, and read index or time ranges in blocks.

A reader never loads a whole file: ``index_range`` bisects the time column with single-row reads
until the span is one block, then ``searchsorted`` the block; ``chunks`` yields consecutive
``EventStream``s of at most ``size`` events. Each read is validated as it is built (``EventStream``),
and ``chunks`` also checks that time is sorted across chunk boundaries; a time-range read trusts the
file to be sorted where it does not read it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

import h5py
import numpy as np

from visloc.events.io.common import EventFileError, concat_streams, empty_stream
from visloc.events.stream import EventStream

#: rows read per block when searching the time column (a few hundred kB of float64)
SEARCH_BLOCK = 1 << 15


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading; ``EventFileError`` naming it when missing, truncated or not HDF5."""
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EventFileError(f"{path}: not a readable HDF5 file ({first})") from None


def require_dataset(f: h5py.File, key: str, path: str | Path, ndim: int, columns: int | None = None) -> h5py.Dataset:
    """``f[key]`` as a dataset of ``ndim`` dimensions (and ``columns`` columns); else one line saying what is missing.

    The message lists the keys present where ``key`` was expected, so a file of another layout (a
    ground-truth file instead of a data file, a right-only camera) is recognisable.
    """
    obj = f.get(key)
    if obj is None:
        parent = key.rpartition("/")[0]
        while parent and not isinstance(f.get(parent), h5py.Group):  # the deepest group that exists
            parent = parent.rpartition("/")[0]
        node = f.get(parent) if parent else f
        present = sorted(node.keys()) if isinstance(node, h5py.Group) else []
        raise EventFileError(f"{path}: no dataset {key} (keys under /{parent}: {', '.join(present) or 'none'})")
    if not isinstance(obj, h5py.Dataset):
        raise EventFileError(f"{path}: {key} is a {type(obj).__name__}, not a dataset")
    if len(obj.shape) != ndim or (columns is not None and obj.shape[1] != columns):
        want = f"[N, {columns}]" if columns is not None else f"{ndim}-D"
        raise EventFileError(f"{path}: {key} has shape {obj.shape}, expected {want}")
    if obj.dtype.kind not in "iuf":
        raise EventFileError(f"{path}: {key} holds {obj.dtype}, expected numbers")
    return obj


def read_rows(ds: h5py.Dataset, sel: slice | tuple[slice, int], path: str | Path) -> np.ndarray:
    """``ds[sel]``, with a read failure (a damaged chunk, a cut-off file) as an ``EventFileError``."""
    try:
        return np.asarray(ds[sel])
    except (OSError, RuntimeError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EventFileError(f"{path}: cannot read {ds.name} ({first}); the file may be truncated") from None


def searchsorted_blocks(read_t: Callable[[int, int], np.ndarray], n: int, value: int,
                        side: Literal["left", "right"] = "left", block: int | None = None) -> int:
    """``np.searchsorted(t, value, side)`` over a sorted ``t`` of ``n`` rows read by ``read_t(i0, i1)``.

    Bisects with single-row reads until the candidate span is at most ``block`` rows, then reads that
    span: ``O(log(n / block))`` tiny reads and one block, whatever the file's size (``block``
    defaults to ``SEARCH_BLOCK``).
    """
    block = SEARCH_BLOCK if block is None else max(1, block)
    lo, hi = 0, n  # the answer lies in [lo, hi]
    while hi - lo > block:
        mid = (lo + hi) // 2
        v = int(read_t(mid, mid + 1)[0])
        if v < value or (side == "right" and v == value):
            lo = mid + 1
        else:
            hi = mid
    return lo + int(np.searchsorted(read_t(lo, hi), value, side=side))


class LazyEvents(abc.ABC):
    """An open event file read on demand; a context manager (``close`` releases the file).

    Attributes:
        path: the file.
        sensor_size: ``(W, H)``.
        origin_us: absolute µs of ``t = 0`` in every stream it returns (times given to it are relative to it).
    """

    path: Path
    sensor_size: tuple[int, int]
    origin_us: int

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open_h5(self.path)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _read_t(self, i0: int, i1: int) -> np.ndarray:
        """``[i1 - i0]`` int64 µs relative to ``origin_us`` of events ``i0 .. i1 - 1``."""

    @abc.abstractmethod
    def _read(self, i0: int, i1: int) -> EventStream:
        """Events ``i0 .. i1 - 1`` (``0 <= i0 <= i1 <= len``), validated."""

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def __enter__(self) -> LazyEvents:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def time_span_us(self) -> tuple[int, int]:
        """``(t[0], t[-1])`` µs relative to the origin (``(0, 0)`` when empty); reads two rows."""
        n = len(self)
        return (int(self._read_t(0, 1)[0]), int(self._read_t(n - 1, n)[0])) if n else (0, 0)

    def index_range(self, t0_us: int, t1_us: int) -> tuple[int, int]:
        """``(i0, i1)`` of the events with ``t0_us <= t < t1_us`` (µs relative to the origin)."""
        if t1_us < t0_us:
            raise ValueError(f"index_range: t1_us = {t1_us} < t0_us = {t0_us}")
        n = len(self)
        return (searchsorted_blocks(self._read_t, n, t0_us), searchsorted_blocks(self._read_t, n, t1_us))

    def read_index(self, i0: int, i1: int) -> EventStream:
        """Events ``i0 .. i1 - 1``; ``0 <= i0 <= i1 <= len`` (no negative indices)."""
        if not 0 <= i0 <= i1 <= len(self):
            raise ValueError(f"read_index: need 0 <= i0 <= i1 <= {len(self)}, got ({i0}, {i1})")
        return self._read(i0, i1) if i1 > i0 else empty_stream(self.sensor_size, self.origin_us)

    def read_time(self, t0_us: int, t1_us: int) -> EventStream:
        """The events with ``t0_us <= t < t1_us`` (µs relative to the origin), reading only them."""
        return self.read_index(*self.index_range(t0_us, t1_us))

    def chunks(self, size: int = 1 << 20, t0_us: int | None = None, t1_us: int | None = None) -> Iterator[EventStream]:
        """Consecutive streams of at most ``size`` events, over ``[t0_us, t1_us)`` (default: everything).

        Raises:
            EventFileError: time goes backwards across two chunks (the file is not sorted).
        """
        if size < 1:
            raise ValueError(f"chunks: size must be >= 1, got {size}")
        n = len(self)
        i0 = 0 if t0_us is None else searchsorted_blocks(self._read_t, n, t0_us)
        i1 = n if t1_us is None else searchsorted_blocks(self._read_t, n, t1_us)
        last = None
        for a in range(i0, i1, size):
            chunk = self._read(a, min(a + size, i1))
            if last is not None and int(chunk.t[0]) < last:
                raise EventFileError(f"{self.path} (event {a}): EventStream.t: not sorted (t = {int(chunk.t[0])} "
                                     f"µs after {last} µs)")
            last = int(chunk.t[-1])
            yield chunk

    def read_all(self, size: int = 1 << 20) -> EventStream:
        """Every event, read in chunks of ``size`` (a whole recording may not fit in memory: prefer ``chunks``)."""
        return concat_streams(self.chunks(size), self.sensor_size, self.origin_us, self.path)
