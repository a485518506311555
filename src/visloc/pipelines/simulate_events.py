"""Simulate events from a frame folder (+ timestamps file) or a video into an HDF5 event file.

``simulate_events(out, frames=DIR, timestamps=FILE | video=FILE, conf=EsimConf(...))`` reads the frames
(``events.frame_sources``), runs ``events.simulator.EventSimulator`` over them and streams each chunk
into ``out``, visloc's event file (``events.io.h5``: ``events/t``, ``x``, ``y``, ``p``; ``origin_us`` is the
first frame's time on the source's clock), written atomically. The resolved conf and the source are recorded
in the file's ``visloc_simulator`` attribute (JSON): a re-run with the same record skips, a different
one needs ``overwrite``.

Every ``flow_every``-th frame pair is checked for motion (``frame_sources.mean_flow_px``); when a
pair's mean flow exceeds ``max_flow_px`` the run logs one warning (inter-frame motion too large for
faithful events: upsample the frames first) and the summary reports it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.events.frame_sources import (
    DEFAULT_MAX_FLOW_PX,
    FrameSequence,
    TimeUnit,
    VideoTiming,
    folder_frames,
    mean_flow_px,
    video_frames,
)
from visloc.events.io.common import EventFileError
from visloc.events.io.h5 import EventWriter, VislocEvents, check_event_output
from visloc.events.simulator import EsimConf, EventSimulator
from visloc.io.locks import output_lock

logger = logging.getLogger(__name__)
RECORD_ATTR = "visloc_simulator"
MOTION_HINT = "upsample the frames (e.g. frame interpolation) for faithful events"


@dataclass
class SimulateSummary:
    """What a simulation wrote.

    Attributes:
        out: the event file.
        frames: frames read.
        events: events written.
        duration_us: first to last frame.
        sensor_size: ``(W, H)``.
        seconds: wall time of the run.
        max_flow_px: the largest mean flow of the checked frame pairs (None when none was checked).
        warnings: one line each, also logged when found (too much motion: the first pair over the threshold).
        already_done: ``out`` existed with the same record; nothing was run.
    """

    out: Path
    frames: int = 0
    events: int = 0
    duration_us: int = 0
    sensor_size: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    max_flow_px: float | None = None
    warnings: list[str] = field(default_factory=list)
    already_done: bool = False

    def lines(self) -> list[str]:
        """Summary lines for the CLI."""
        if self.already_done:
            return [f"events simulate: already done (same conf and input) -> {self.out}"]
        w, h = self.sensor_size
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        out = [f"events simulate: {self.frames} frames ({w}x{h}, {self.duration_us / 1e6:.3f} s) -> "
               f"{self.events} events in {self.seconds:.1f} s ({rate:.1f} frames/s) -> {self.out}"]
        if self.max_flow_px is not None:
            hint = f": too much for faithful events, {MOTION_HINT}" if self.warnings else ""
            out.append(f"  motion: mean optical flow up to {self.max_flow_px:.2f} px per frame{hint}")
        return out


def parse_size(text: str) -> tuple[int, int]:
    """``"346x260"`` -> ``(346, 260)`` (width x height); ``InputError`` otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size: expected WIDTHxHEIGHT such as 346x260, got {text!r}") from None
    if w < 1 or h < 1:
        raise InputError(f"--size: expected a positive size, got {text!r}")
    return w, h


def _source(frames: Path | None, timestamps: Path | None, timestamps_unit: TimeUnit, video: Path | None,
            video_timing: VideoTiming, fps: float | None, size: tuple[int, int] | None) -> FrameSequence:
    if frames is not None and video is None:
        if timestamps is None:
            raise InputError(f"{frames}: a frame folder needs --timestamps FILE (one time per image)")
        return folder_frames(frames, timestamps, timestamps_unit, size)
    if video is not None and frames is None:
        if timestamps is not None:
            raise InputError("--timestamps goes with --frames; a video is timed by its frame rate or positions")
        return video_frames(video, video_timing, fps, size)
    raise InputError("give exactly one of --frames DIR (with --timestamps FILE) or --video FILE")


def _record(conf: EsimConf, source: FrameSequence, **inputs: object) -> str:
    return json.dumps({"conf": conf_to_dict(conf), "source": source.name,
                       "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()}}, sort_keys=True)


def stored_record(path: Path) -> str | None:
    """The simulator record of an existing event file (None when it has none); ``InputError`` when unreadable."""
    try:
        f = VislocEvents(path)
    except EventFileError as e:
        raise InputError(f"{e} (--overwrite to replace it)") from None
    try:
        return f.attrs.get(RECORD_ATTR)
    finally:
        f.close()


def simulate_events(out: Path, *, frames: Path | None = None, timestamps: Path | None = None,
                    timestamps_unit: TimeUnit = "s", video: Path | None = None, video_timing: VideoTiming = "fps",
                    fps: float | None = None, size: tuple[int, int] | None = None, conf: EsimConf | None = None,
                    overwrite: bool = False, progress: bool = True, max_flow_px: float = DEFAULT_MAX_FLOW_PX,
                    flow_every: int = 10) -> SimulateSummary:
    """Simulate the events of ``frames`` + ``timestamps`` or of ``video`` into ``out``; see the module docstring.

    Raises:
        InputError: bad inputs (one line naming the file), fewer than two frames, ``out`` made with
            another record and no ``overwrite``.
        OutputError: ``out`` exists and is not a visloc event file (``overwrite`` or not).
        OutputLockedError: another job is writing ``out``.
    """
    conf = conf or EsimConf()
    out = Path(out)
    if flow_every < 1:
        raise InputError(f"flow_every: expected >= 1, got {flow_every}")
    check_event_output(out)
    with output_lock(out):
        return _simulate(out, frames, timestamps, timestamps_unit, video, video_timing, fps, size, conf, overwrite,
                         progress, max_flow_px, flow_every)


def _simulate(out: Path, frames: Path | None, timestamps: Path | None, timestamps_unit: TimeUnit, video: Path | None,
              video_timing: VideoTiming, fps: float | None, size: tuple[int, int] | None, conf: EsimConf,
              overwrite: bool, progress: bool, max_flow_px: float, flow_every: int) -> SimulateSummary:
    source = _source(frames, timestamps, timestamps_unit, video, video_timing, fps, size)
    record = _record(conf, source, timestamps=timestamps, timestamps_unit=timestamps_unit, video_timing=video_timing,
                     fps=fps, size=list(size) if size else None)
    if out.exists() and not overwrite:
        if stored_record(out) == record:
            return SimulateSummary(out, already_done=True)
        raise InputError(f"{out}: exists, made with another conf or input (--overwrite to replace it)")
    summary = SimulateSummary(out)
    start = time.perf_counter()
    it = iter(source)
    first = next(it, None)
    if first is None:
        raise InputError(f"{source.name}: no frames")
    frame0, t0 = first
    h, w = frame0.shape[:2]
    sim = EventSimulator((w, h), conf)
    sim.feed(frame0, t0)
    prev, t_prev, summary.frames = frame0, t0, 1
    with EventWriter(out, (w, h), t0, attrs={RECORD_ATTR: record}) as writer, \
            tqdm(total=source.total, desc="events simulate", unit="frame", disable=not progress, initial=1) as bar:
        for i, (frame, t) in enumerate(it, 1):
            if frame.shape[:2] != (h, w):
                raise InputError(f"{source.name}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, the first {w}x{h}")
            if t <= t_prev:
                raise InputError(f"{source.name}: frame {i}: time {t} µs is not after the previous {t_prev} µs")
            if (i - 1) % flow_every == 0:
                flow = mean_flow_px(prev, frame)
                summary.max_flow_px = max(flow, summary.max_flow_px or 0.0)
                if flow > max_flow_px and not summary.warnings:
                    summary.warnings.append(
                        f"{source.name}: frames {i - 1}-{i} move {flow:.2f} px (mean optical flow), more than "
                        f"{max_flow_px} px per frame: {MOTION_HINT}")
                    logger.warning("%s", summary.warnings[-1])
            writer.append(chunk := sim.feed(frame, t))
            summary.events += len(chunk)
            bar.update(1)
            bar.set_postfix(events=summary.events, refresh=False)
            prev, t_prev, summary.frames = frame, t, i + 1
        if summary.frames < 2:
            raise InputError(f"{source.name}: one frame only; events need at least two")
    summary.duration_us = t_prev - t0
    summary.sensor_size = (w, h)
    summary.seconds = time.perf_counter() - start
    return summary
