"""visloc's own event file: chunked, compressed HDF5, written streamed and atomically, read lazily.

Layout (``format = "visloc-events"``, ``format_version = 1``), readable by any HDF5 tool::

    /                 attrs: format, format_version, sensor_size [W, H] int64, origin_us int64, and any
                      string attributes the writer was given (e.g. the simulator's record, JSON)
    /events/t         int64  [N]  µs relative to origin_us, sorted
    /events/x         uint16 [N]  pixel column in [0, W)
    /events/y         uint16 [N]  pixel row in [0, H)
    /events/p         int8   [N]  polarity in {-1, +1}

Each dataset is chunked (``chunk_events`` per chunk), gzip-compressed with the shuffle filter, and
resizable, so the writer appends stream by stream and the reader reads any index or time range
without loading the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from visloc.events.io.common import EventFileError, scalar
from visloc.events.io.hdf5 import LazyEvents, read_rows, require_dataset
from visloc.events.stream import EventStream, EventStreamError
from visloc.io.atomic import atomic_path
from visloc.io.outputs import HDF5_MAGIC, check_file_output, has_magic

FORMAT = "visloc-events"
VERSION = 1
_RESERVED = ("format", "format_version", "sensor_size", "origin_us")
_FIELDS = {"t": np.int64, "x": np.uint16, "y": np.uint16, "p": np.int8}


def is_event_file(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file with an ``events`` group (a visloc event file, of any record)."""
    if not has_magic(path, HDF5_MAGIC):
        return False
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("events"), h5py.Group)
    except (OSError, ValueError):
        return False


def check_event_output(out: str | Path, option: str = "--out") -> None:
    """``OutputError`` unless ``out`` is absent or a visloc event file (``--overwrite`` never replaces another kind)."""
    check_file_output(out, "visloc event (HDF5)", is_event_file, option)


class EventWriter:
    """Writes one visloc event file stream by stream; it appears at ``path`` only when the ``with`` block ends.

    Use as a context manager: ``with EventWriter(out, (346, 260), origin_us) as w: w.append(chunk)``.
    An exception inside the block (or a refused chunk) leaves no file at ``path`` (``io.atomic``).

    Args:
        path: the file to write (replaced if it exists).
        sensor_size: ``(W, H)``, at most 65535 each (``uint16`` coordinates).
        origin_us: absolute µs of the file's ``t = 0``; appended streams of another origin are re-based.
        chunk_events: events per HDF5 chunk (the unit of compression and of partial reads).
        compression: gzip level 0-9.
        attrs: extra string attributes of the root (names other than the format's own).
    """

    def __init__(self, path: str | Path, sensor_size: tuple[int, int], origin_us: int = 0, *,
                 chunk_events: int = 1 << 16, compression: int = 4, attrs: Mapping[str, str] | None = None) -> None:
        w, h = sensor_size
        if not (0 < w <= 65535 and 0 < h <= 65535):
            raise ValueError(f"EventWriter: sensor_size must be in [1, 65535]^2, got {sensor_size}")
        if chunk_events < 1 or not 0 <= compression <= 9:
            raise ValueError(f"EventWriter: need chunk_events >= 1 and compression in 0..9, got "
                             f"{chunk_events}, {compression}")
        reserved = set(attrs or {}) & set(_RESERVED)
        if reserved:
            raise ValueError(f"EventWriter: attrs may not set the format's own attributes {sorted(reserved)}")
        self.path = Path(path)
        self.attrs = {str(k): str(v) for k, v in (attrs or {}).items()}
        self.sensor_size = (int(w), int(h))
        self.origin_us = int(origin_us)
        self._chunk, self._level = chunk_events, compression
        self._stack: contextlib.ExitStack | None = None
        self._ds: dict[str, h5py.Dataset] = {}
        self._n = 0
        self._last: int | None = None

    def __enter__(self) -> EventWriter:
        with contextlib.ExitStack() as stack:  # a failure here unwinds it: no temporary file is left
            tmp = stack.enter_context(atomic_path(self.path))
            f = stack.enter_context(h5py.File(tmp, "w"))
            f.attrs.update({"format": FORMAT, "format_version": VERSION,
                            "sensor_size": np.asarray(self.sensor_size, np.int64),
                            "origin_us": np.int64(self.origin_us), **self.attrs})
            grp = f.create_group("events")
            for name, dtype in _FIELDS.items():
                self._ds[name] = grp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                                    chunks=(self._chunk,), compression="gzip",
                                                    compression_opts=self._level, shuffle=True)
            self._stack = stack.pop_all()
        return self

    def append(self, stream: EventStream) -> None:
        """Append ``stream``'s events (same sensor; its first event no earlier than the last one written)."""
        if self._stack is None:
            raise RuntimeError("EventWriter.append: use the writer as a context manager ('with EventWriter(...)')")
        if stream.sensor_size != self.sensor_size:
            raise ValueError(f"EventWriter.append: a stream of sensor {stream.sensor_size}, the file is "
                             f"{self.sensor_size}")
        if not len(stream):
            return
        t = stream.t if stream.origin_us == self.origin_us else stream.t + np.int64(stream.origin_us - self.origin_us)
        if self._last is not None and int(t[0]) < self._last:
            raise ValueError(f"EventWriter.append: t = {int(t[0])} µs is before the last written {self._last} µs "
                             "(append streams in time order)")
        n, m = self._n, len(stream)
        for name, values in (("t", t), ("x", stream.x), ("y", stream.y), ("p", stream.p)):
            ds = self._ds[name]
            ds.resize((n + m,))
            ds[n:] = values.astype(_FIELDS[name], copy=False)
        self._n, self._last = n + m, int(t[-1])

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(kind, value, tb)  # closes the file, then publishes it (or, on an error, removes it)


def write_events(path: str | Path, streams: EventStream | Iterable[EventStream], *,
                 sensor_size: tuple[int, int] | None = None, origin_us: int | None = None,
                 chunk_events: int = 1 << 16, compression: int = 4) -> Path:
    """Write one stream, or consecutive chunks of one (e.g. another reader's ``chunks()``), atomically.

    ``sensor_size`` and ``origin_us`` default to the first stream's. Returns ``path``.
    """
    it = iter([streams] if isinstance(streams, EventStream) else streams)
    first = next(it, None)
    if first is None:
        if sensor_size is None:
            raise ValueError("write_events: no stream to write and no sensor_size given")
        size, origin = sensor_size, origin_us or 0
    else:
        size = first.sensor_size if sensor_size is None else sensor_size
        origin = first.origin_us if origin_us is None else origin_us
    with EventWriter(path, size, origin, chunk_events=chunk_events, compression=compression) as w:
        if first is not None:
            w.append(first)
        for s in it:
            w.append(s)
    return Path(path)


class VislocEvents(LazyEvents):
    """A visloc event file (``write_events``), read on demand.

    Raises:
        EventFileError: the file is missing, not HDF5 (or truncated), not of this format or of a newer
            version, or its datasets are missing or of different lengths.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        try:
            self._probe()
        except EventFileError:
            self.close()
            raise

    def _probe(self) -> None:
        attrs = self._file.attrs
        fmt = attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise EventFileError(f"{self.path}: not a visloc event file (attribute format = {fmt!r}, "
                                 f"expected {FORMAT!r})")
        version = attrs.get("format_version")
        if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= VERSION:
            raise EventFileError(f"{self.path}: format_version {scalar(version)}; this visloc reads {FORMAT} "
                                 f"versions 1 to {VERSION}")
        for key in ("sensor_size", "origin_us"):
            if key not in attrs:
                raise EventFileError(f"{self.path}: no attribute {key}")
        size = np.asarray(attrs["sensor_size"]).reshape(-1)
        if len(size) != 2 or size.dtype.kind not in "iu" or int(size.min()) < 1:
            raise EventFileError(f"{self.path}: attribute sensor_size = {size.tolist()}, expected [W, H] >= 1")
        self.sensor_size = (int(size[0]), int(size[1]))
        origin = np.asarray(attrs["origin_us"])
        if origin.shape != () or origin.dtype.kind not in "iu":
            raise EventFileError(f"{self.path}: attribute origin_us = {origin.tolist()}, expected an integer (µs)")
        self.origin_us = int(origin.item())
        self._ds = {name: require_dataset(self._file, f"events/{name}", self.path, ndim=1) for name in _FIELDS}
        lengths = {name: ds.shape[0] for name, ds in self._ds.items()}
        if len(set(lengths.values())) != 1:
            raise EventFileError(f"{self.path}: events/t, x, y, p have different lengths {lengths}")

    def __len__(self) -> int:
        return int(self._ds["t"].shape[0])

    @property
    def attrs(self) -> dict[str, str]:
        """The extra string attributes of the root (those ``EventWriter(attrs=...)`` wrote)."""
        out = {}
        for k, v in self._file.attrs.items():
            if k not in _RESERVED:
                out[str(k)] = v.decode() if isinstance(v, bytes) else str(v)
        return out

    def _read_t(self, i0: int, i1: int) -> np.ndarray:
        return read_rows(self._ds["t"], slice(i0, i1), self.path).astype(np.int64, copy=False)

    def _read(self, i0: int, i1: int) -> EventStream:
        cols = {name: read_rows(ds, slice(i0, i1), self.path) for name, ds in self._ds.items()}
        try:
            return EventStream(cols["t"].astype(np.int64, copy=False), cols["x"], cols["y"], cols["p"],
                               self.sensor_size, self.origin_us)
        except EventStreamError as e:
            raise EventFileError(f"{self.path} (events {i0}..{i1 - 1}): {e}") from None
