"""``visloc events``: ``info FILE`` (count, duration, sensor size, rate: ``describe_events``) and ``simulate``.

``simulate`` (frames or a video -> simulated events) is thin over ``pipelines.simulate_events``; with
``--world-drive DIR`` (a traversal of a world drive folder, rendered at an adaptive rate) over
``pipelines.simulate_world``. An option left out leaves the API's default in place, so the command and the
API cannot drift.
"""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visloc.cli_common import SetOpt, fail, run

events_app = typer.Typer(help="Event cameras: read event files (MVSEC HDF5, visloc HDF5, text, npy windows, "
                              "parquet) and simulate events from frames or a video.", no_args_is_help=True)


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


FramesOpt = Annotated[Optional[Path], typer.Option(help="Folder of frames (images, in name order).")]
TimestampsOpt = Annotated[Optional[Path], typer.Option(help="Text file: one time per frame, one per line.")]
UnitOpt = Annotated[Optional[str], typer.Option(help="Unit of --timestamps: s (seconds) or us (integer "
                                                     "microseconds); default s.")]
VideoOpt = Annotated[Optional[Path], typer.Option(help="Or a video file (decoded by OpenCV).")]
TimingOpt = Annotated[Optional[str], typer.Option(help="Video frame times: fps (i / frame rate) or pos_msec (the "
                                                       "decoder's position of each frame); default fps.")]
FpsOpt = Annotated[Optional[float], typer.Option(help="Frame rate for --video-timing fps (default: the file's).")]
SizeOpt = Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT each frame is resized to cover and centre-cropped "
                                                     "to, e.g. 346x260 (DAVIS346); default: as read.")]
OutOpt = Annotated[Path, typer.Option(help="visloc event file to write (HDF5: events/t, x, y, p).")]
FlowOpt = Annotated[Optional[float], typer.Option(help="Warn when a checked frame pair moves more than this many "
                                                       "pixels (mean optical flow); default 0.5.")]
WorldOpt = Annotated[Optional[Path], typer.Option(help="Or a world drive folder (visloc data world drive): its "
                                                       "traversal is rendered again at an adaptive rate.")]
TraversalOpt = Annotated[Optional[str], typer.Option(help="With --world-drive: the traversal (default: the only "
                                                          "one).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an --out made with another conf or input.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress bar.")]


@events_app.command("simulate")
def simulate(out: OutOpt, frames: FramesOpt = None, timestamps: TimestampsOpt = None, timestamps_unit: UnitOpt = None,
             video: VideoOpt = None, video_timing: TimingOpt = None, fps: FpsOpt = None, size: SizeOpt = None,
             set_: SetOpt = None, max_flow_px: FlowOpt = None, world_drive: WorldOpt = None,
             traversal: TraversalOpt = None, overwrite: OverwriteOpt = False, quiet: QuietOpt = False) -> None:
    """ESIM events (contrast thresholds, mismatch, refractory, leak, shot noise; --set key=value) into --out.

    With --world-drive, --set takes the world conf's keys (esim.contrast_pos=0.25, max_flow_px=0.5, ...) and
    --max-flow-px sets its adaptive rate.
    """
    from visloc.conf import apply_overrides
    from visloc.events.simulator import EsimConf
    from visloc.pipelines.simulate_events import parse_size, simulate_events

    if world_drive is not None:
        _world(out, world_drive, traversal, list(set_ or ()), max_flow_px, overwrite, quiet,
               given=[n for n, v in (("--frames", frames), ("--timestamps", timestamps), ("--video", video),
                                     ("--size", size)) if v is not None])
        return
    if traversal is not None:
        fail("--traversal goes with --world-drive")
    conf = run(apply_overrides, EsimConf(), list(set_ or ()))
    given: dict[str, Any] = {"frames": frames, "timestamps": timestamps, "timestamps_unit": timestamps_unit,
                             "video": video, "video_timing": video_timing, "fps": fps,
                             "size": run(parse_size, size) if size is not None else None, "max_flow_px": max_flow_px}
    summary = run(simulate_events, out, conf=conf, overwrite=overwrite, progress=not quiet,
                  **{k: v for k, v in given.items() if v is not None})
    for line in summary.lines():
        typer.echo(line)


def _world(out: Path, root: Path, traversal: str | None, overrides: list[str], max_flow_px: float | None,
           overwrite: bool, quiet: bool, given: list[str]) -> None:
    from visloc.conf import apply_overrides
    from visloc.events.world_drive import WorldEventsConf, drive_traversals
    from visloc.pipelines.simulate_world import simulate_traversal

    if given:
        fail(f"--world-drive is a source of its own; leave out {', '.join(given)}")
    conf = run(apply_overrides, WorldEventsConf(), overrides)
    if max_flow_px is not None:
        conf = run(apply_overrides, conf, {"max_flow_px": max_flow_px})
    if traversal is None:
        names = run(drive_traversals, root)
        if len(names) != 1:
            fail(f"{root}: --traversal is needed, the drive has {', '.join(names) or 'none'}")
        traversal = names[0]
    summary = run(simulate_traversal, root, traversal, out, conf, overwrite=overwrite, progress=not quiet)
    for line in summary.lines():
        typer.echo(line)
