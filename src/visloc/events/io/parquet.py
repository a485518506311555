"""Parquet event files, as Brisbane-Event-VPR's ``dvs_vpr_*.parquet`` (columns ``t`` µs, ``x``, ``y``, ``p``).

The Brisbane copies (Hugging Face ``TobiasRobotics/brisbane-event-vpr``, read by sparse-event-vpr)
hold absolute epoch microseconds in ``t``; the camera is a DAVIS346 (346 x 260). A file is read batch
by batch (``pyarrow``, imported on use), and a time range reads only the row groups whose ``t``
statistics overlap it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from visloc.events.io.common import ChunkBuilder, EventFileError, PolarityArg, concat_streams
from visloc.events.stream import EventStream, EventStreamError, seconds_to_us

if TYPE_CHECKING:
    import pyarrow.parquet as pq

#: DAVIS346 ``(W, H)``
BRISBANE_SENSOR = (346, 260)
_COLUMNS = ("t", "x", "y", "p")


def _open(path: Path) -> pq.ParquetFile:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EventFileError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise EventFileError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None
    missing = [c for c in _COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise EventFileError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(pf.schema_arrow.names)})")
    return pf


def _row_groups(pf: pq.ParquetFile, lo: int | None, hi: int | None) -> list[tuple[int, int]]:
    """``(row group, first row)`` of the row groups whose raw ``t`` range may meet ``[lo, hi)``."""
    meta, j = pf.metadata, pf.schema_arrow.get_field_index("t")
    out, start = [], 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        stats = rg.column(j).statistics
        if (stats is None or not stats.has_min_max
                or ((lo is None or stats.max >= lo) and (hi is None or stats.min < hi))):
            out.append((g, start))
        start += rg.num_rows
    return out


def _first_us(path: Path, pf: pq.ParquetFile, t_unit: Literal["us", "s"]) -> int:
    """The absolute µs of the first event (the default origin, needed before a time range can be pruned)."""
    v = next(pf.iter_batches(batch_size=1, columns=["t"])).column(0).to_numpy(zero_copy_only=False)
    try:
        if t_unit == "s":
            return int(seconds_to_us(np.asarray(v, np.float64))[0])
        if np.issubdtype(v.dtype, np.integer):
            return int(v[0])
        if np.isfinite(v[0]) and float(v[0]) == round(float(v[0])):
            return int(v[0])
    except (EventStreamError, TypeError, ValueError):
        pass
    raise EventFileError(f"{path} (row 0): t = {v[0]!r} is not a time in {t_unit}")


def iter_parquet_events(path: str | Path, sensor_size: tuple[int, int] = BRISBANE_SENSOR, *,
                        t_unit: Literal["us", "s"] = "us", polarity: PolarityArg = "auto",
                        origin_us: int | None = None, t0_us: int | None = None, t1_us: int | None = None,
                        batch_size: int = 1 << 20) -> Iterator[EventStream]:
    """Consecutive streams (at most ``batch_size`` events each) of a parquet file, on one origin.

    Args:
        path: the ``.parquet`` file.
        sensor_size: ``(W, H)``; the DAVIS346 by default.
        t_unit: the unit of column ``t``.
        polarity: ``"auto"``, ``"01"`` or ``"pm1"``.
        origin_us: absolute µs of ``t = 0``; default: the first event's time.
        t0_us: keep events with ``t >= t0_us`` (µs relative to the origin).
        t1_us: keep events with ``t < t1_us``.
        batch_size: rows per batch read.

    Raises:
        EventFileError: the file is missing or not parquet, lacks a column, holds nulls, or its events
            break the stream's contract (naming the row).
    """
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"iter_parquet_events: batch_size must be >= 1, got {batch_size}")
    pf = _open(path)
    if origin_us is None and pf.metadata.num_rows:
        origin_us = _first_us(path, pf, t_unit)
    builder = ChunkBuilder(path, sensor_size, t_unit=t_unit, polarity=polarity, origin_us=origin_us)
    base = 0 if origin_us is None else origin_us
    raw = t_unit == "us"  # statistics prune row groups only when t is stored in µs
    groups = _row_groups(pf, base + t0_us if raw and t0_us is not None else None,
                         base + t1_us if raw and t1_us is not None else None)
    for g, start in groups:
        row = start
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=list(_COLUMNS)):
            cols = []
            for name in _COLUMNS:
                col = batch.column(batch.schema.get_field_index(name))
                if col.null_count:
                    raise EventFileError(f"{path}: column {name} holds {col.null_count} nulls near row {row}")
                cols.append(col.to_numpy(zero_copy_only=False))
            offset = row
            chunk = builder.build(cols[0], cols[1], cols[2], cols[3], lambda i, o=offset: f"{path} (row {o + i})")
            row += batch.num_rows
            if t0_us is not None or t1_us is not None:
                if len(chunk) and t1_us is not None and int(chunk.t[0]) >= t1_us:
                    return
                chunk = chunk.slice_time(-(1 << 62) if t0_us is None else t0_us, (1 << 62) if t1_us is None else t1_us)
            if len(chunk):
                yield chunk


def read_parquet_events(path: str | Path, sensor_size: tuple[int, int] = BRISBANE_SENSOR, *,
                        t_unit: Literal["us", "s"] = "us", polarity: PolarityArg = "auto",
                        origin_us: int | None = None, t0_us: int | None = None, t1_us: int | None = None,
                        batch_size: int = 1 << 20) -> EventStream:
    """The events of a parquet file (or of ``[t0_us, t1_us)``) as one stream; see ``iter_parquet_events``."""
    chunks = list(iter_parquet_events(path, sensor_size, t_unit=t_unit, polarity=polarity, origin_us=origin_us,
                                      t0_us=t0_us, t1_us=t1_us, batch_size=batch_size))
    if origin_us is None:
        origin_us = chunks[0].origin_us if chunks else None
    return concat_streams(chunks, sensor_size, origin_us, path)
