"""``visloc live``: match the frames of a video or a camera as they come, draw them, show or record them.

Each frame is fitted to ``LiveConf.size`` (resize to cover, centre crop: ``io.video.fit_frame``) and
matched by a registered image matcher (``MATCHERS`` kind ``image``) against a reference frame
(``mode="reference"``: the first frame, reset to the current one with the key ``r``) or against the
previous frame (``mode="previous"``). The first frame, and the frame at which the reference is reset,
is matched against itself. The two frames are drawn side by side, the match lines coloured by
confidence, with the FPS and the match count. A window shows them when a display exists (keys: ``q``
or Esc quits, ``r`` resets the reference, ``p`` pauses); the annotated video is written when
``LiveConf.out`` is set or when no window is shown (``<source name>-live.mp4`` in the working folder
then). The video is written atomically; Ctrl-C ends the loop and keeps the frames written so far.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np
import torch

from visloc.errors import InputError
from visloc.io.locks import output_lock
from visloc.io.outputs import OutputError, check_file_output
from visloc.io.video import FrameReader, OpenedVideo, VideoOut, fit_frame, open_video
from visloc.matching.api import match_images
from visloc.matching.base import MATCHERS, ImageMatcher
from visloc.pipelines.common import pick_device
from visloc.viz.matches import draw_matches_bgr

logger = logging.getLogger(__name__)

#: the matcher ``visloc live`` uses unless told otherwise
DEFAULT_MATCHER = "loftr-coarse"
MODES = ("reference", "previous")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
#: frames per second written when the source declares none (a camera often does not)
FALLBACK_FPS = 15.0
#: a camera that delivers nothing for this long ends the loop with an error
CAMERA_TIMEOUT_S = 10.0
QUIT_KEYS = (ord("q"), 27)  # q, Esc


@dataclass(frozen=True)
class LiveConf:
    """What ``run_live`` matches, and how it shows and records the result.

    Attributes:
        matcher: a registered image matcher (``MATCHERS`` kind ``image``).
        matcher_set: its conf overrides, ``key=value``.
        size: ``(W, H)`` pixels every frame is fitted to (resize to cover, centre crop).
        mode: ``reference`` (against the reference frame) or ``previous`` (against the previous frame).
        out: annotated video to write (``.mp4``, ``.avi``, ``.mov``, ``.mkv``; mp4v codec); None
            writes ``<source name>-live.mp4`` in the working folder when no window is shown.
        max_frames: stop after this many frames (None: until the video ends or ``q``).
        show: show a window; None: when a display exists.
        device: ``cpu``, ``cuda`` or automatic when None.
        max_lines: at most this many match lines drawn per frame.
        queue_size: frames buffered by the reading thread.
    """

    matcher: str = DEFAULT_MATCHER
    matcher_set: tuple[str, ...] = ()
    size: tuple[int, int] = (640, 480)
    mode: str = "reference"
    out: Path | None = None
    max_frames: int | None = None
    show: bool | None = None
    device: str | None = None
    max_lines: int = 300
    queue_size: int = 4

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 16:
            raise InputError(f"size: expected (W, H) of at least 16 pixels each, got {self.size}")
        if self.mode not in MODES:
            raise InputError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.out is not None and Path(self.out).suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"{self.out}: expected a video file ending in {', '.join(VIDEO_SUFFIXES)}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"max_frames: expected >= 1 (or none), got {self.max_frames}")
        if self.max_lines < 0 or self.queue_size < 1:
            raise InputError(f"max_lines >= 0 and queue_size >= 1 expected, got {self.max_lines}, {self.queue_size}")


@dataclass(frozen=True)
class LiveSummary:
    """What a live run did.

    Attributes:
        frames: frames matched (and drawn).
        fps_mean: frames per second over the loop (reading, matching, drawing, writing, showing).
        matches_mean: mean number of matches per frame.
        out: the annotated video written, or None.
        ended: why the loop ended: ``end of video``, ``max frames``, ``quit`` or ``interrupted``.
        source: the file or ``camera ID``.
        dropped: camera frames dropped because matching was slower than the camera.
    """

    frames: int
    fps_mean: float
    matches_mean: float
    out: Path | None
    ended: str
    source: str
    dropped: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary lines (the CLI prints them)."""
        lines = [f"live: {self.frames} frames of {self.source} ({self.ended}), {self.fps_mean:.1f} FPS, "
                 f"{self.matches_mean:.1f} matches per frame"]
        if self.dropped:
            lines.append(f"{self.dropped} camera frames dropped (matching slower than the camera)")
        if self.out is not None:
            lines.append(f"annotated video -> {self.out}")
        return lines


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width x height); ``InputError`` otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size: expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    return w, h


class Display(Protocol):
    """Where frames are shown: ``show`` returns the key pressed within ``wait_ms`` (-1: none)."""

    def show(self, canvas: np.ndarray, wait_ms: int) -> int: ...  # noqa: D102 - see the class docstring

    def close(self) -> None: ...  # noqa: D102


def display_available() -> bool:
    """Whether an OpenCV window can open: OpenCV has a GUI backend and (on Linux) a display is set."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("", "NONE")
    return False


class Window:
    """An OpenCV window; closing it counts as ``q``."""

    def __init__(self, title: str = "visloc live") -> None:
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)

    def show(self, canvas: np.ndarray, wait_ms: int) -> int:
        """Show ``canvas`` (BGR) and return the key pressed within ``wait_ms`` (-1: none)."""
        cv2.imshow(self.title, canvas)
        key = cv2.waitKey(max(1, wait_ms))
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return QUIT_KEYS[0]
        return key & 0xFF if key >= 0 else -1

    def close(self) -> None:
        """Close the window."""
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)


def build_live_matcher(conf: LiveConf) -> ImageMatcher:
    """The image matcher of ``conf`` (``InputError`` for a feature matcher, ``UnknownNameError`` for a typo)."""
    if MATCHERS.kind_of(conf.matcher) != "image":
        raise InputError(f"matcher {conf.matcher!r} matches features, not images; image matchers: "
                         f"{', '.join(MATCHERS.names('image'))}")
    return MATCHERS.build(conf.matcher, list(conf.matcher_set))


def default_out(source: Path | int) -> Path:
    """``<file stem>-live.mp4`` or ``camera<ID>-live.mp4`` in the working folder."""
    return Path(f"camera{source}-live.mp4" if isinstance(source, int) else f"{Path(source).stem}-live.mp4")


class _Frame(NamedTuple):
    """A fitted frame: ``[H, W, 3]`` uint8 BGR (drawn) and float32 RGB in ``[0, 1]`` (matched)."""

    bgr: np.ndarray
    rgb: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, size: tuple[int, int]) -> _Frame:
        bgr = np.ascontiguousarray(fit_frame(raw, size))
        return cls(bgr, bgr[..., ::-1].astype(np.float32) / 255.0)


@dataclass
class _Loop:
    """The state of one run: the pair matched per frame, counters, the FPS shown."""

    matcher: ImageMatcher
    conf: LiveConf
    device: torch.device
    writer: VideoOut | None
    window: Display | None
    reference: _Frame | None = None
    previous: _Frame | None = None
    frames: int = 0
    matches: int = 0
    fps: float = 0.0
    last: float = field(default_factory=time.perf_counter)

    def step(self, raw: np.ndarray) -> str | None:
        """Match, draw, write and show one frame; return why to stop (``quit``) or None."""
        frame = _Frame.fit(raw, self.conf.size)
        if self.reference is None:
            self.reference = frame
        other = self.reference if self.conf.mode == "reference" else self.previous
        other = frame if other is None else other
        pred = match_images(self.matcher, other.rgb, frame.rgb, device=self.device)
        m, scores = pred.numpy()
        kp0, kp1 = pred.keypoints0, pred.keypoints1
        k0 = kp0.numpy()[m[:, 0]] if kp0 is not None else np.zeros((0, 2))
        k1 = kp1.numpy()[m[:, 1]] if kp1 is not None else np.zeros((0, 2))
        self.frames += 1
        self.matches += len(m)
        now = time.perf_counter()
        rate = 1.0 / max(now - self.last, 1e-6)
        self.fps, self.last = (rate if self.frames == 1 else 0.9 * self.fps + 0.1 * rate), now
        text = f"{self.conf.matcher} | {self.fps:.1f} FPS | {len(m)} matches | vs {self.conf.mode}"
        # plain lines: anti-aliased ones cost about 30 us each here, a frame's worth of them tens of ms
        canvas = draw_matches_bgr(other.bgr, frame.bgr, k0, k1, scores=scores, text=text,
                                  max_lines=self.conf.max_lines, antialias=False)
        if self.writer is not None:
            self.writer.write(canvas)
        self.previous = frame
        return self._keys(canvas, frame) if self.window is not None else None

    def _keys(self, canvas: np.ndarray, frame: _Frame) -> str | None:
        """Handle the keys: ``q``/Esc quit, ``r`` resets the reference, ``p`` pauses until ``p`` again."""
        window = self.window
        key = window.show(canvas, 1) if window is not None else -1
        paused = key == ord("p")
        while True:
            if key in QUIT_KEYS:
                return "quit"
            if key == ord("r"):
                self.reference = frame
            if not paused or window is None:
                return None
            key = window.show(canvas, 50)
            paused = key != ord("p")


def _resolve_outputs(source: Path | int, conf: LiveConf, display: Display | None) -> tuple[bool, Path | None]:
    """Whether a window is shown, and the video written (when ``out`` is set or nothing is shown)."""
    if display is not None:
        show = True
    else:
        available = display_available()
        if conf.show and not available:
            raise InputError("--show: no display here (DISPLAY unset or OpenCV without GUI); use --out")
        show = available if conf.show is None else conf.show
    out = conf.out if conf.out is not None or show else default_out(source)
    return show, out


def run_live(source: Path | str | int, conf: LiveConf | None = None, *, matcher: ImageMatcher | None = None,
             display: Display | None = None) -> LiveSummary:
    """Match a video file (a path) or a camera (an int id) frame by frame; see the module docstring.

    Args:
        source: the video file, or the camera id.
        conf: what to match and how to show / record it (default ``LiveConf()``).
        matcher: an already built image matcher instead of ``conf.matcher`` (its name stays the caption).
        display: where to show frames instead of an OpenCV window (tests; implies showing).

    Raises:
        InputError: the file is missing or not a video, the camera does not open, ``--show`` without a
            display, a feature matcher given as the matcher, an unwritable ``out``.
        OutputError: ``out`` is the source video, or exists and is not a video (checked before any frame).
        OutputLockedError: another job is writing ``out``.
    """
    conf = conf or LiveConf()
    src: Path | int = Path(source) if isinstance(source, str) else source
    show, out = _resolve_outputs(src, conf, display)
    if out is None:
        return _run(src, conf, matcher, display, show, None)
    _check_video_out(out, src)
    with output_lock(out):
        return _run(src, conf, matcher, display, show, out)


def _check_video_out(out: Path, source: Path | int) -> None:
    """``OutputError`` before any frame when ``out`` is the source video, or exists and is not a video."""
    if isinstance(source, Path):
        with contextlib.suppress(OSError):  # either is missing: not the same file
            if Path(out).samefile(source):
                raise OutputError(f"{out}: is the input video; refusing to replace it (choose another --out)")
    check_file_output(out, "video", _is_video)


def _is_video(path: Path) -> bool:
    """Whether ``path`` begins as an MP4 / MOV (``ftyp`` box), AVI (RIFF) or MKV (EBML) file."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" or head.startswith((b"RIFF", b"\x1aE\xdf\xa3"))


def _run(src: Path | int, conf: LiveConf, matcher: ImageMatcher | None, display: Display | None, show: bool,
         out: Path | None) -> LiveSummary:
    video = open_video(src)  # first: a bad source is named before any matcher is looked up
    try:
        device = pick_device(conf.device)
        model = (matcher if matcher is not None else build_live_matcher(conf)).to(device).eval()
        window = display if display is not None else (Window() if show else None)
    except BaseException:
        video.capture.release()  # the reader that would release it never started
        raise
    writer = VideoOut(out, video.fps or FALLBACK_FPS) if out is not None else None
    loop = _Loop(model, conf, device, writer, window)
    publish, start = False, time.perf_counter()
    try:
        ended, dropped = _drive(video, loop)
        publish = True
    finally:
        written = writer.close(publish) if writer is not None else None
        if window is not None and display is None:
            window.close()
    elapsed = time.perf_counter() - start
    if written is not None:
        logger.info("annotated video -> %s", written)
    return LiveSummary(loop.frames, loop.frames / elapsed if elapsed > 0 else 0.0,
                       loop.matches / max(loop.frames, 1), written, ended, video.name, dropped)


def _drive(video: OpenedVideo, loop: _Loop) -> tuple[str, int]:
    """Feed the frames of ``video`` to ``loop`` from a reader thread; return (why it ended, frames dropped)."""
    max_frames = loop.conf.max_frames
    with FrameReader(video, loop.conf.queue_size) as reader:
        try:
            while max_frames is None or loop.frames < max_frames:
                try:
                    raw = reader.read(timeout=CAMERA_TIMEOUT_S if video.live else None)
                except TimeoutError:
                    raise InputError(f"{video.name}: no frame for {CAMERA_TIMEOUT_S:.0f} s") from None
                if raw is None:
                    return ("camera stopped" if video.live else "end of video"), reader.dropped
                if loop.step(raw) == "quit":
                    return "quit", reader.dropped
            return "max frames", reader.dropped
        except KeyboardInterrupt:
            return "interrupted", reader.dropped


__all__ = ["DEFAULT_MATCHER", "LiveConf", "LiveSummary", "build_live_matcher", "display_available", "parse_size",
           "run_live"]
