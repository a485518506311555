"""``visloc events simulate``: frames or a video -> simulated events; thin over ``pipelines.simulate_events``.

An option left out leaves the API's default in place, so the command and the API cannot drift.
"""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visloc.cli_common import SetOpt, run

events_app = typer.Typer(help="Event cameras: simulate events from frames or a video.", no_args_is_help=True)

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
OutOpt = Annotated[Path, typer.Option(help="HDF5 event file to write (datasets t, x, y, p).")]
FlowOpt = Annotated[Optional[float], typer.Option(help="Warn when a checked frame pair moves more than this many "
                                                       "pixels (mean optical flow); default 0.5.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an --out made with another conf or input.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress bar.")]


@events_app.command("simulate")
def simulate(out: OutOpt, frames: FramesOpt = None, timestamps: TimestampsOpt = None, timestamps_unit: UnitOpt = None,
             video: VideoOpt = None, video_timing: TimingOpt = None, fps: FpsOpt = None, size: SizeOpt = None,
             set_: SetOpt = None, max_flow_px: FlowOpt = None, overwrite: OverwriteOpt = False,
             quiet: QuietOpt = False) -> None:
    """ESIM events (contrast thresholds, mismatch, refractory, leak, shot noise; --set key=value) into --out."""
    from visloc.conf import apply_overrides
    from visloc.events.simulator import EsimConf
    from visloc.pipelines.simulate_events import parse_size, simulate_events

    conf = run(apply_overrides, EsimConf(), list(set_ or ()))
    given: dict[str, Any] = {"frames": frames, "timestamps": timestamps, "timestamps_unit": timestamps_unit,
                             "video": video, "video_timing": video_timing, "fps": fps,
                             "size": run(parse_size, size) if size is not None else None, "max_flow_px": max_flow_px}
    summary = run(simulate_events, out, conf=conf, overwrite=overwrite, progress=not quiet,
                  **{k: v for k, v in given.items() if v is not None})
    for line in summary.lines():
        typer.echo(line)
