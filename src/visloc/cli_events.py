"""``visloc events info FILE``: count, duration, sensor size and rate of an event file (``describe_events``)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from visloc.cli_common import fail, run

events_app = typer.Typer(help="Event-camera files (MVSEC HDF5, visloc HDF5, text, npy windows, parquet).",
                         no_args_is_help=True)


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        fail(f"--sensor-size: expected WIDTHxHEIGHT, e.g. 346x260, got {text!r}")
    return int(w), int(h)


@events_app.command("info")
def events_info(path: Annotated[Path, typer.Argument(help="Event file, or a folder of <timestamp>.npy windows.")],
                sensor_size: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT, for files that do not "
                                                                        "record it (npy, text without a 'W H' "
                                                                        "line).")] = None,
                camera: Annotated[str, typer.Option(help="MVSEC camera: left or right.")] = "left") -> None:
    """Print an event file's format, event count, sensor size, origin, duration and event rate."""
    from visloc.events.io import describe_events

    if camera not in ("left", "right"):
        fail(f"--camera: expected left or right, got {camera!r}")
    size = _size(sensor_size) if sensor_size is not None else None
    info = run(describe_events, path, sensor_size=size, camera=camera)
    for line in info.lines():
        typer.echo(line)
