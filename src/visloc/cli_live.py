"""``visloc live``: match a video file or a camera frame by frame; a thin layer over ``pipelines.live.run_live``.

An option left out leaves ``LiveConf``'s default in place, so the command and the API cannot drift.
"""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visloc.cli_common import DeviceOpt, SetOpt, fail, run

VideoOpt = Annotated[Optional[Path], typer.Option(help="Video file to read (every frame, in order).")]
CameraOpt = Annotated[Optional[int], typer.Option(help="Camera id to read (0: the first camera; old frames "
                                                       "are dropped to keep the latency low).")]
MatcherOpt = Annotated[Optional[str], typer.Option(help="Registered image matcher (default: loftr-coarse).")]
SizeOpt = Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT each frame is resized and centre-cropped to "
                                                     "(default: 640x480).")]
ModeOpt = Annotated[Optional[str], typer.Option(help="reference: against a reference frame (the first; key r "
                                                     "resets it), previous: against the previous frame "
                                                     "(default: reference).")]
OutOpt = Annotated[Optional[Path], typer.Option(help="Annotated video to write (.mp4; default: none when a "
                                                     "window is shown, else SOURCE-live.mp4 here).")]
MaxFramesOpt = Annotated[Optional[int], typer.Option(help="Stop after N frames (default: at the end).")]
ShowOpt = Annotated[Optional[bool], typer.Option("--show/--no-show", help="Show a window (keys: q or Esc quits, "
                                                                          "r resets the reference, p pauses; "
                                                                          "default: when a display exists).")]


def live(video: VideoOpt = None, camera: CameraOpt = None, matcher: MatcherOpt = None, set_: SetOpt = None,
         size: SizeOpt = None, mode: ModeOpt = None, out: OutOpt = None, max_frames: MaxFramesOpt = None,
         show: ShowOpt = None, device: DeviceOpt = None) -> None:
    """Match each frame of --video or --camera against a reference frame or the previous one; show or record it."""
    from visloc.pipelines.live import LiveConf, parse_size, run_live

    if (video is None) == (camera is None):
        fail("give exactly one of --video FILE or --camera ID")
    given: dict[str, Any] = {"matcher": matcher, "mode": mode, "out": out, "max_frames": max_frames, "show": show,
                             "device": device, "size": run(parse_size, size) if size is not None else None,
                             "matcher_set": tuple(set_) if set_ else None}
    conf = run(LiveConf, **{k: v for k, v in given.items() if v is not None})
    summary = run(run_live, video if video is not None else camera, conf)
    for line in summary.lines():
        typer.echo(line)
