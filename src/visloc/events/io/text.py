"""Text event files: one ``t x y p`` line per event, as rpg's datasets, ESIM and rpg_e2vid write them.

- ``t`` is in seconds (``t_unit="s"``, absolute or relative, as the file has it) or integer µs;
- ``p`` is in {0, 1} (rpg, ESIM) or {-1, +1}; ``"auto"`` tells them apart (a file mixing both is refused);
- an optional first line ``W H`` gives the sensor size (rpg_e2vid's format); blank lines and lines
  starting with ``#`` are skipped.

Files are read in chunks of ``chunk_lines`` lines (``iter_text_events``), so a large file streams
through constant memory; a bad line is reported as ``file:line``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.events.io.common import ChunkBuilder, EventFileError, PolarityArg, concat_streams
from visloc.events.stream import EventStream
from visloc.io.atomic import atomic_path

_US_PER_S = 1_000_000


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the content lines (not blank, not ``#``), decoded as UTF-8."""
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EventFileError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1})") from None
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                yield lineno, stripped


def _header(fields: list[str]) -> tuple[int, int] | None:
    if len(fields) == 2 and all(f.isdigit() for f in fields) and all(int(f) > 0 for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def read_text_header(path: str | Path) -> tuple[int, int] | None:
    """The ``(W, H)`` of a first ``W H`` line, or None when the first content line is an event."""
    for _, line in _lines(Path(path)):
        return _header(line.split())
    return None


def _parse(path: Path, lines: list[str], linenos: list[int]) -> np.ndarray:
    """``[n, 4]`` float64 of ``n`` lines; on a malformed one, ``EventFileError`` naming ``file:line``."""
    try:
        rows = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments=None)
        if rows.shape == (len(lines), 4):
            return rows
    except ValueError:
        pass
    for lineno, line in zip(linenos, lines, strict=True):  # the slow path only finds the culprit
        fields = line.split()
        try:
            ok = len(fields) == 4 and all(np.isfinite(float(v)) for v in fields)
        except ValueError:
            ok = False
        if not ok:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise EventFileError(f"{path}:{lineno}: expected 't x y p' (4 numbers), got {shown!r}")
    raise EventFileError(f"{path}:{linenos[0]}: cannot parse lines {linenos[0]}..{linenos[-1]}")


def iter_text_events(path: str | Path, sensor_size: tuple[int, int] | None = None, *,
                     t_unit: Literal["s", "us"] = "s", polarity: PolarityArg = "auto",
                     origin_us: int | None = None, chunk_lines: int = 1 << 20) -> Iterator[EventStream]:
    """Consecutive streams of at most ``chunk_lines`` events of a text file, on one origin.

    Args:
        path: the text file.
        sensor_size: ``(W, H)``; required unless the file starts with a ``W H`` line (they must agree).
        t_unit: ``"s"`` (float seconds) or ``"us"`` (integer µs).
        polarity: ``"auto"``, ``"01"`` or ``"pm1"``.
        origin_us: absolute µs of ``t = 0``; default: the first event's time.
        chunk_lines: events per chunk.

    Raises:
        EventFileError: naming ``file:line``: non-UTF-8 bytes, a malformed line, unsorted time, a pixel
            outside the sensor, a polarity of neither encoding; or no sensor size.
    """
    path = Path(path)
    if chunk_lines < 1:
        raise ValueError(f"iter_text_events: chunk_lines must be >= 1, got {chunk_lines}")
    builder: ChunkBuilder | None = None
    lines: list[str] = []
    linenos: list[int] = []

    def flush(b: ChunkBuilder) -> EventStream:
        rows = _parse(path, lines, linenos)
        numbers = list(linenos)
        chunk = b.build(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], lambda i: f"{path}:{numbers[i]}")
        lines.clear()
        linenos.clear()
        return chunk

    for lineno, line in _lines(path):
        if builder is None:
            header = _header(line.split())
            size = _sensor_size(path, header, sensor_size)
            builder = ChunkBuilder(path, size, t_unit=t_unit, polarity=polarity, origin_us=origin_us)
            if header is not None:
                continue
        lines.append(line)
        linenos.append(lineno)
        if len(lines) == chunk_lines:
            yield flush(builder)
    if builder is None:
        _sensor_size(path, None, sensor_size)  # an empty file still needs a sensor size
    elif lines:
        yield flush(builder)


def _sensor_size(path: Path, header: tuple[int, int] | None, given: tuple[int, int] | None) -> tuple[int, int]:
    if header is not None and given is not None and tuple(given) != header:
        raise EventFileError(f"{path}: the header says the sensor is {header[0]} x {header[1]}, "
                             f"sensor_size says {given[0]} x {given[1]}")
    size = header or given
    if size is None:
        raise EventFileError(f"{path}: no 'W H' header line; give the sensor size (sensor_size=(W, H))")
    return (int(size[0]), int(size[1]))


def read_text_events(path: str | Path, sensor_size: tuple[int, int] | None = None, *,
                     t_unit: Literal["s", "us"] = "s", polarity: PolarityArg = "auto",
                     origin_us: int | None = None, chunk_lines: int = 1 << 20) -> EventStream:
    """Every event of a text file as one stream (see ``iter_text_events`` for the arguments and errors)."""
    path = Path(path)
    chunks = list(iter_text_events(path, sensor_size, t_unit=t_unit, polarity=polarity, origin_us=origin_us,
                                   chunk_lines=chunk_lines))
    size = chunks[0].sensor_size if chunks else _sensor_size(path, read_text_header(path), sensor_size)
    return concat_streams(chunks, size, origin_us, path)


def _seconds(abs_us: np.ndarray) -> list[str]:
    """Exact decimal seconds (6 digits) of absolute µs."""
    q, r = np.divmod(np.abs(abs_us), _US_PER_S)
    return [f"{'-' if neg else ''}{a}.{b:06d}" for neg, a, b in zip((abs_us < 0).tolist(), q.tolist(), r.tolist(),
                                                                      strict=True)]


def write_text_events(path: str | Path, stream: EventStream, *, header: bool = True,
                      polarity: Literal["01", "pm1"] = "01", chunk_events: int = 1 << 18) -> Path:
    """Write ``stream`` as text atomically: a ``W H`` line (``header``), then ``t x y p`` lines.

    ``t`` is the absolute time (``origin_us + t``) in seconds with 6 decimals (exact µs); ``p`` is
    written in ``polarity``'s encoding (``"01"``: rpg / ESIM). Returns ``path``.
    """
    if polarity not in ("01", "pm1"):
        raise ValueError(f"write_text_events: polarity must be '01' or 'pm1', got {polarity!r}")
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        if header:
            f.write(f"{stream.width} {stream.height}\n")
        for i in range(0, len(stream), chunk_events):
            part = stream.slice_index(i, min(i + chunk_events, len(stream)))
            p = part.p if polarity == "pm1" else (part.p > 0).astype(np.int8)
            f.writelines(f"{t} {x} {y} {v}\n" for t, x, y, v in zip(_seconds(part.t + np.int64(part.origin_us)),
                                                                    part.x.tolist(), part.y.tolist(), p.tolist(),
                                                                    strict=True))
    return Path(path)
