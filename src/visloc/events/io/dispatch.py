"""One entry point for every event file: ``read_events`` / ``iter_events`` / ``describe_events``.

The format is told by the suffix and a look at the content (HDF5 and parquet magic bytes, the
``.npy`` header, HDF5 keys and attributes, a first text line of numbers); ``FORMATS`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py

from visloc.events.io import h5, mvsec, npy, parquet, text
from visloc.events.io.common import EventFileError, PolarityArg, concat_streams
from visloc.events.io.hdf5 import open_h5
from visloc.events.stream import EventStream

#: format name -> what it is (the names ``read_events(fmt=...)`` takes)
FORMATS: dict[str, str] = {
    "visloc-h5": "visloc's HDF5 (.h5: events/t, x, y, p; attribute format = 'visloc-events')",
    "mvsec-h5": "MVSEC HDF5 (<seq>_data.hdf5: davis/<camera>/events [N, 4] x, y, t s, p)",
    "text": "text, one 't x y p' line per event, optional 'W H' first line (rpg, ESIM, rpg_e2vid)",
    "npy": "one .npy window, [N, 4] rows t, x, y, p",
    "npy-folder": "a folder of <timestamp>.npy windows",
    "parquet": "parquet with columns t (µs), x, y, p (Brisbane-Event-VPR)",
}
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_TEXT_SUFFIXES = (".txt", ".dat", ".events")


def _known() -> str:
    return "; ".join(f"{k}: {v}" for k, v in FORMATS.items())


def _probe_h5(path: Path) -> str:
    with open_h5(path) as f:
        fmt = f.attrs.get("format")
        if (fmt.decode() if isinstance(fmt, bytes) else fmt) == h5.FORMAT:
            return "visloc-h5"
        davis = f.get("davis")
        if isinstance(davis, h5py.Group):
            cams = [g for g in (davis.get(c) for c in davis) if isinstance(g, h5py.Group)]
            if any("events" in g for g in cams):
                return "mvsec-h5"
            if any("pose" in g or "depth_image_rect" in g for g in cams):
                raise EventFileError(f"{path}: an MVSEC ground-truth file (no davis/*/events); its poses are read "
                                     "by read_mvsec_trajectory, the events are in <seq>_data.hdf5")
        keys = ", ".join(sorted(f.keys())) or "none"
    raise EventFileError(f"{path}: an HDF5 file of no known event layout (top-level keys: {keys}); known: {_known()}")


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        lines = head.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return False
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            [float(v) for v in fields]
        except ValueError:
            return False
        return len(fields) in (2, 4)
    return False


def detect_format(path: str | Path) -> str:
    """The ``FORMATS`` name of ``path``; ``EventFileError`` naming the known formats when it cannot tell."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.npy")):
            return "npy-folder"
        raise EventFileError(f"{path}: a folder without .npy windows; known formats: {_known()}")
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    with path.open("rb") as f:
        head = f.read(8)
    suffix = path.suffix.lower()
    if suffix in _H5_SUFFIXES or head == b"\x89HDF\r\n\x1a\n":
        return _probe_h5(path)
    if suffix == ".parquet" or head[:4] == b"PAR1":
        return "parquet"
    if suffix == ".npy" or head[:6] == b"\x93NUMPY":
        return "npy"
    if suffix in _TEXT_SUFFIXES or _looks_like_text(path):
        return "text"
    raise EventFileError(f"{path}: cannot tell the event format (suffix {suffix or 'none'}); known: {_known()}")


def _need_size(path: Path, sensor_size: tuple[int, int] | None, fmt: str) -> tuple[int, int]:
    if sensor_size is None:
        raise EventFileError(f"{path}: {fmt} files do not record the sensor size; give it (sensor_size=(W, H), "
                             "e.g. 346 260 for a DAVIS346)")
    return sensor_size


def iter_events(path: str | Path, *, fmt: str | None = None, sensor_size: tuple[int, int] | None = None,
                origin_us: int | None = None, polarity: PolarityArg | None = None,
                t_unit: Literal["s", "us"] | None = None, camera: Literal["left", "right"] = "left",
                chunk_events: int = 1 << 20) -> Iterator[EventStream]:
    """Consecutive streams of an event file of any ``FORMATS`` entry, on one origin.

    Args:
        path: the file or folder.
        fmt: a ``FORMATS`` name; default: detected.
        sensor_size: ``(W, H)``; needed for npy and header-less text, defaults to 346 x 260 for MVSEC
            and parquet, must match a visloc file's.
        origin_us: absolute µs of ``t = 0``; default: the file's (visloc) or its first event's.
        polarity: the file's encoding; default: ``"pm1"`` for MVSEC, ``"auto"`` otherwise.
        t_unit: unit of the time column; default: seconds for text and npy, µs for parquet.
        camera: MVSEC's ``davis/<camera>``.
        chunk_events: events per chunk (npy windows come one per file).

    Raises:
        EventFileError: an unknown format, or any reader's error (one line naming the file).
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"iter_events: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "visloc-h5":
        with h5.VislocEvents(path) as r:
            if sensor_size is not None and tuple(sensor_size) != r.sensor_size:
                raise EventFileError(f"{path}: the file's sensor is {r.sensor_size}, sensor_size says {sensor_size}")
            for chunk in r.chunks(chunk_events):
                yield chunk if origin_us is None else chunk.shifted(chunk.origin_us - origin_us)
    elif fmt == "mvsec-h5":
        with mvsec.MvsecEvents(path, camera=camera, sensor_size=sensor_size or mvsec.MVSEC_SENSOR,
                               origin_us=origin_us, polarity=polarity or "pm1") as r:
            yield from r.chunks(chunk_events)
    elif fmt == "text":
        yield from text.iter_text_events(path, sensor_size, t_unit=t_unit or "s", polarity=polarity or "auto",
                                         origin_us=origin_us, chunk_lines=chunk_events)
    elif fmt == "parquet":
        yield from parquet.iter_parquet_events(path, sensor_size or parquet.BRISBANE_SENSOR, t_unit=t_unit or "us",
                                               polarity=polarity or "auto", origin_us=origin_us,
                                               batch_size=chunk_events)
    elif fmt == "npy":
        yield npy.read_npy_events(path, _need_size(path, sensor_size, fmt), t_unit=t_unit or "s",
                                  polarity=polarity or "auto", origin_us=origin_us)
    else:
        for w in npy.read_npy_windows(path, _need_size(path, sensor_size, fmt), t_unit=t_unit or "s",
                                      polarity=polarity or "auto", origin_us=origin_us):
            yield w.stream


def read_events(path: str | Path, *, fmt: str | None = None, sensor_size: tuple[int, int] | None = None,
                origin_us: int | None = None, polarity: PolarityArg | None = None,
                t_unit: Literal["s", "us"] | None = None, camera: Literal["left", "right"] = "left") -> EventStream:
    """Every event of a file of any ``FORMATS`` entry as one ``EventStream`` (arguments: ``iter_events``).

    A recording larger than memory is better read in pieces: ``iter_events``, or the lazy readers
    (``VislocEvents``, ``MvsecEvents``) for index and time ranges.
    """
    chunks = list(iter_events(path, fmt=fmt, sensor_size=sensor_size, origin_us=origin_us, polarity=polarity,
                              t_unit=t_unit, camera=camera))
    if chunks:
        return concat_streams(chunks, chunks[0].sensor_size, chunks[0].origin_us, path)
    size = sensor_size or _empty_size(Path(path), fmt)
    return concat_streams([], size, origin_us, path)


def _empty_size(path: Path, fmt: str | None) -> tuple[int, int]:
    """The sensor size of a file without events (a visloc file records it; text may have a header)."""
    fmt = fmt or detect_format(path)
    if fmt == "visloc-h5":
        with h5.VislocEvents(path) as r:
            return r.sensor_size
    if fmt == "text":
        return text.read_text_header(path) or _need_size(path, None, fmt)
    return mvsec.MVSEC_SENSOR if fmt == "mvsec-h5" else parquet.BRISBANE_SENSOR


@dataclass(frozen=True)
class EventFileInfo:
    """A summary of an event file.

    Attributes:
        format: its ``FORMATS`` name.
        count: number of events.
        sensor_size: ``(W, H)``.
        origin_us: absolute µs of ``t = 0``.
        t_first_us: first event's time, µs relative to the origin (0 when empty).
        t_last_us: last event's time, likewise.
    """

    format: str
    count: int
    sensor_size: tuple[int, int]
    origin_us: int
    t_first_us: int
    t_last_us: int

    @property
    def duration_s(self) -> float:
        """``(t_last - t_first)`` in seconds."""
        return (self.t_last_us - self.t_first_us) / 1e6

    @property
    def rate_hz(self) -> float:
        """Events per second over the duration (0 for a zero duration)."""
        return self.count / self.duration_s if self.duration_s > 0 else 0.0

    def lines(self) -> list[str]:
        """The summary as ``key: value`` lines (what ``visloc events info`` prints)."""
        return [f"format: {self.format}", f"events: {self.count}",
                f"sensor: {self.sensor_size[0]} x {self.sensor_size[1]}", f"origin_us: {self.origin_us}",
                f"duration: {self.duration_s:.6f} s", f"rate: {self.rate_hz:.1f} events/s"]


def describe_events(path: str | Path, *, sensor_size: tuple[int, int] | None = None,
                    camera: Literal["left", "right"] = "left") -> EventFileInfo:
    """Count, time span and sensor of an event file: two-row reads for HDF5, one streamed pass otherwise."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("visloc-h5", "mvsec-h5"):
        reader = h5.VislocEvents(path) if fmt == "visloc-h5" else \
            mvsec.MvsecEvents(path, camera=camera, sensor_size=sensor_size or mvsec.MVSEC_SENSOR)
        with reader as r:
            return EventFileInfo(fmt, len(r), r.sensor_size, r.origin_us, *r.time_span_us())
    count, first, last, size, origin = 0, None, 0, sensor_size, 0
    for chunk in iter_events(path, fmt=fmt, sensor_size=sensor_size, camera=camera):
        size, origin = chunk.sensor_size, chunk.origin_us
        if len(chunk):
            count += len(chunk)
            first = int(chunk.t[0]) if first is None else first
            last = int(chunk.t[-1])
    return EventFileInfo(fmt, count, size or _empty_size(path, fmt), origin, first or 0, last)
