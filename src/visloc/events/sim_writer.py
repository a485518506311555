"""A minimal HDF5 file of events for the simulator's output.

Stopgap: the shared event readers and writers (``visloc.events.io``) replace this module; until then it
writes the same simple layout, so that files written now stay readable.

Layout (``format = "visloc-events"``, ``version = 1``): root datasets ``t`` int64 (µs relative to
``origin_us``, sorted), ``x`` uint16 (column), ``y`` uint16 (row), ``p`` int8 in {-1, +1}, chunked and
resizable; root attributes ``format``, ``version``, ``sensor_size`` ``[W, H]``, ``origin_us`` (int µs on
the recording's clock) and any extra attributes the caller gives (strings, e.g. JSON). The file appears
in one rename once complete (``io.atomic.atomic_path``): an interrupted run leaves no partial file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from visloc.errors import InputError
from visloc.events.stream import EventStream
from visloc.io.atomic import atomic_path

FORMAT = "visloc-events"
VERSION = 1
#: events per HDF5 chunk
CHUNK = 1 << 16
_DTYPES = {"t": np.int64, "x": np.uint16, "y": np.uint16, "p": np.int8}


class EventsH5Writer:
    """Appends ``EventStream`` chunks (same sensor and origin, in time order) to an open file."""

    def __init__(self, file: h5py.File, sensor_size: tuple[int, int], origin_us: int) -> None:
        self.sensor_size, self.origin_us = sensor_size, origin_us
        self.count = 0
        self._last_t: int | None = None
        self._sets = {name: file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,))
                      for name, dtype in _DTYPES.items()}

    def append(self, events: EventStream) -> None:
        """Write ``events`` after the ones already written.

        Raises:
            ValueError: another sensor size or origin, or events earlier than the last one written.
        """
        if events.sensor_size != self.sensor_size or events.origin_us != self.origin_us:
            raise ValueError(f"events: sensor {events.sensor_size} origin {events.origin_us}, the file's are "
                             f"{self.sensor_size} origin {self.origin_us}")
        n = len(events)
        if not n:
            return
        if self._last_t is not None and int(events.t[0]) < self._last_t:
            raise ValueError(f"events: t[0] = {int(events.t[0])} before the last written {self._last_t}")
        for name, ds in self._sets.items():
            ds.resize((self.count + n,))
            ds[self.count:] = getattr(events, name).astype(_DTYPES[name], copy=False)
        self.count += n
        self._last_t = int(events.t[-1])


@contextlib.contextmanager
def events_h5_writer(path: str | Path, sensor_size: tuple[int, int], origin_us: int,
                     attrs: Mapping[str, str] | None = None) -> Iterator[EventsH5Writer]:
    """A writer of ``path``, published (renamed onto ``path``) when the block ends without an exception."""
    w, h = sensor_size
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "version": VERSION, "sensor_size": np.asarray([w, h], np.int64),
                        "origin_us": np.int64(origin_us), **dict(attrs or {})})
        yield EventsH5Writer(f, (int(w), int(h)), int(origin_us))


def read_events_h5(path: str | Path) -> tuple[EventStream, dict[str, object]]:
    """The events and root attributes of a file of this layout (``InputError`` naming it otherwise)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs: dict[str, object] = {str(k): v for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise InputError(f"{path}: not a {FORMAT} file (format {attrs.get('format')!r})")
            arrays = {name: np.asarray(f[name]) for name in _DTYPES}
    except (OSError, KeyError) as e:
        raise InputError(f"{path}: cannot read as {FORMAT} ({type(e).__name__}: {e})") from None
    w, h = (int(v) for v in np.asarray(attrs["sensor_size"]))
    origin = int(np.asarray(attrs["origin_us"]))
    return EventStream(arrays["t"], arrays["x"], arrays["y"], arrays["p"], (w, h), origin), attrs
