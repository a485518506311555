"""Per-window ``.npy`` event files (the seed's layout): a folder of ``<timestamp>.npy``, one window each.

Each file holds ``[N, 4]`` rows ``(t, x, y, p)`` (a structured array with fields ``t, x, y, p`` is
read too), ``t`` in ``t_unit`` (seconds by default), ``p`` in {0, 1} or {-1, +1}. The file's name is
its window's timestamp in ``name_unit`` (e.g. ``1504645177.123456.npy``). Files are loaded with
``allow_pickle=False``: an object array is refused, never unpickled. ``.npy`` records no sensor size,
so the caller gives it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.errors import InputError
from visloc.events.io.common import ChunkBuilder, EventFileError, PolarityArg, concat_streams
from visloc.events.stream import EventStream, seconds_to_us
from visloc.io.arrays import load_npy


@dataclass(frozen=True)
class NpyWindow:
    """One window file.

    Attributes:
        path: the file.
        name_us: the timestamp of its name, absolute µs.
        stream: its events (every window of a folder shares one origin).
    """

    path: Path
    name_us: int
    stream: EventStream


def _columns(path: Path, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if arr.dtype.names is not None:
        missing = [k for k in "txyp" if k not in arr.dtype.names]
        if missing or arr.ndim != 1:
            raise EventFileError(f"{path}: a structured array needs 1-D fields t, x, y, p; got fields "
                                 f"{list(arr.dtype.names)} of shape {arr.shape}")
        return arr["t"], arr["x"], arr["y"], arr["p"]
    if arr.ndim != 2 or arr.shape[1] != 4:
        hint = " (transposed? rows must be events)" if arr.ndim == 2 and arr.shape[0] == 4 else ""
        raise EventFileError(f"{path}: expected [N, 4] rows (t, x, y, p), got shape {arr.shape}{hint}")
    if arr.dtype.kind not in "iuf":
        raise EventFileError(f"{path}: expected numbers, got dtype {arr.dtype}")
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def read_npy_events(path: str | Path, sensor_size: tuple[int, int], *, t_unit: Literal["s", "us"] = "s",
                    polarity: PolarityArg = "auto", origin_us: int | None = None) -> EventStream:
    """The events of one ``.npy`` window file (origin: ``origin_us``, default its first event).

    Raises:
        EventFileError: the file is missing, not a ``.npy`` array, holds objects, is not ``[N, 4]``,
            or its events break the stream's contract (naming the row).
    """
    path = Path(path)
    try:
        arr = load_npy(path, "events")
    except InputError as e:
        raise EventFileError(str(e)) from None
    t, x, y, p = _columns(path, arr)
    builder = ChunkBuilder(path, sensor_size, t_unit=t_unit, polarity=polarity, origin_us=origin_us)
    return builder.build(t, x, y, p, lambda i: f"{path} (row {i})")


def _name_us(path: Path, unit: Literal["s", "us"]) -> int:
    try:
        value = float(path.stem) if unit == "s" else int(path.stem)
    except ValueError:
        raise EventFileError(f"{path}: the name is not a timestamp in {unit} (expected e.g. "
                             f"{'1504645177.123456' if unit == 's' else '1504645177123456'}.npy)") from None
    if not np.isfinite(value):
        raise EventFileError(f"{path}: the name is not a finite timestamp")
    return int(seconds_to_us(np.array([value]))[0]) if unit == "s" else int(value)


def read_npy_windows(folder: str | Path, sensor_size: tuple[int, int], *, t_unit: Literal["s", "us"] = "s",
                     name_unit: Literal["s", "us"] | None = None, polarity: PolarityArg = "auto",
                     origin_us: int | None = None) -> tuple[NpyWindow, ...]:
    """Every ``<timestamp>.npy`` window of ``folder``, in timestamp order, on one origin.

    Args:
        folder: the folder (not searched recursively).
        sensor_size: ``(W, H)``.
        t_unit: unit of the ``t`` column.
        name_unit: unit of the names' timestamps (default ``t_unit``).
        polarity: ``"auto"`` (each file all {0, 1} or all {-1, +1}), ``"01"`` or ``"pm1"``.
        origin_us: absolute µs of ``t = 0``; default: the first event of the earliest window.

    Raises:
        EventFileError: no ``.npy`` files, a name that is not a timestamp, two files of one timestamp,
            or a bad file (``read_npy_events``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EventFileError(f"{folder}: not a folder of .npy windows")
    unit = name_unit or t_unit
    named = sorted((_name_us(p, unit), p) for p in folder.glob("*.npy"))
    if not named:
        raise EventFileError(f"{folder}: no .npy window files")
    for (a, pa), (b, pb) in itertools.pairwise(named):
        if a == b:
            raise EventFileError(f"{folder}: {pa.name} and {pb.name} have the same timestamp")
    streams = []
    for _, path in named:
        stream = read_npy_events(path, sensor_size, t_unit=t_unit, polarity=polarity, origin_us=origin_us)
        if origin_us is None and len(stream):
            origin_us = stream.origin_us  # the later windows are read on the first one's origin
        streams.append(stream)
    origin = 0 if origin_us is None else origin_us
    return tuple(NpyWindow(path, name_us, s if s.origin_us == origin else _empty_on(s, origin))
                 for (name_us, path), s in zip(named, streams, strict=True))


def _empty_on(stream: EventStream, origin_us: int) -> EventStream:
    """An empty window (read before the origin was known) on ``origin_us``."""
    return EventStream(stream.t, stream.x, stream.y, stream.p, stream.sensor_size, origin_us)


def read_npy_folder(folder: str | Path, sensor_size: tuple[int, int], *, t_unit: Literal["s", "us"] = "s",
                    name_unit: Literal["s", "us"] | None = None, polarity: PolarityArg = "auto",
                    origin_us: int | None = None) -> EventStream:
    """The windows of ``folder`` joined into one stream (arguments: ``read_npy_windows``).

    Raises:
        EventFileError: see ``read_npy_windows``; or the windows overlap in time (read them one by one).
    """
    windows = read_npy_windows(folder, sensor_size, t_unit=t_unit, name_unit=name_unit, polarity=polarity,
                               origin_us=origin_us)
    return concat_streams([w.stream for w in windows], sensor_size, windows[0].stream.origin_us,
                          f"{folder} (overlapping windows? read them with read_npy_windows)")
