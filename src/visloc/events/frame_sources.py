"""Frames with timestamps for the simulator: an image folder with a timestamps file, or a video file.

- ``read_timestamps(path, unit)``: one time per line (blank lines and ``#`` comments skipped), in
  seconds (``"s"``, decimal text converted exactly to the nearest µs, e.g. vid2e's ``timestamps.txt``)
  or integer microseconds (``"us"``); strictly increasing.
- ``folder_frames(dir, timestamps, unit)``: the images of a folder (``io.images.IMAGE_SUFFIXES``, not
  recursive) in name order, one timestamp each.
- ``video_frames(path, timing)``: the frames of a video read with OpenCV (``cv2.VideoCapture``), timed
  from its frame rate (``"fps"``: ``t_i = i / fps``, or ``fps`` given) or from the decoder's
  ``CAP_PROP_POS_MSEC`` of each frame (``"pos_msec"``: variable frame rate containers).

Both give ``FrameSequence``: grayscale frames (ITU-R BT.601 luminance, as OpenCV) with int µs times,
optionally resized to cover ``size = (W, H)`` and centre-cropped (``io.video.fit_frame``). Problems the
user can fix raise ``InputError`` with one line naming the file: a count mismatch between images and
timestamps, times not increasing, an unreadable video, images of different sizes.

``mean_flow_px(a, b)``: the mean optical-flow magnitude between two frames (Farneback, on a copy
reduced to at most ``FLOW_MAX_SIDE`` px, scaled back to full-resolution pixels). ESIM interpolates
brightness linearly between frames, which is faithful only while the image moves well under a pixel
per frame (rpg_esim's adaptive sampling keeps it to ``lambda = 0.5`` px; vid2e upsamples until it is
below 1 px): ``DEFAULT_MAX_FLOW_PX`` is the threshold above which the pipeline warns.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from visloc.errors import InputError
from visloc.io.images import IMAGE_SUFFIXES, read_image
from visloc.io.video import fit_frame, open_video

TimeUnit = Literal["s", "us"]
VideoTiming = Literal["fps", "pos_msec"]
#: mean inter-frame motion (px) above which simulated events are not faithful
DEFAULT_MAX_FLOW_PX = 0.5
#: the optical flow of the motion check runs on frames reduced to this longest side
FLOW_MAX_SIDE = 160


@dataclass(frozen=True)
class FrameSequence:
    """Frames and their times, read lazily.

    Attributes:
        name: the source (folder or video path), for messages.
        total: the number of frames when known beforehand (a video's header may be approximate).
        frames: a function returning a fresh iterator of ``(frame, t_us)``: ``[H, W]`` uint8 or float32
            in ``[0, 1]`` grayscale, int µs on the source's clock.
    """

    name: str
    total: int | None
    frames: Callable[[], Iterator[tuple[np.ndarray, int]]]

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        return self.frames()


def _seconds_to_us(text: str) -> int:
    """Decimal seconds -> the nearest int µs (exact: no float rounding); ``ValueError`` if not a finite number."""
    value = decimal.Decimal(text)
    if not value.is_finite():
        raise ValueError(text)
    return int((value * 1_000_000).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


def read_timestamps(path: Path, unit: TimeUnit) -> np.ndarray:
    """``[N]`` int64 µs from a text file of one time per line in ``unit``.

    Raises:
        InputError: a missing file, a line that is not one number (integral for ``"us"``), a time not
            after the previous one, no times at all.
    """
    path = Path(path)
    if unit not in ("s", "us"):
        raise InputError(f"timestamp unit: expected 's' or 'us', got {unit!r}")
    if not path.is_file():
        raise InputError(f"{path}: timestamps file not found")
    out: list[int] = []
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            value = _seconds_to_us(line) if unit == "s" else int(line)
        except (ValueError, decimal.InvalidOperation):
            what = "a number of seconds" if unit == "s" else "an integer of µs (--timestamps-unit s for seconds)"
            raise InputError(f"{path}: line {no}: expected {what}, got {line!r}") from None
        if out and value <= out[-1]:
            raise InputError(f"{path}: line {no}: time {line} is not after the previous one (strictly increasing "
                             "times needed)")
        out.append(value)
    if not out:
        raise InputError(f"{path}: no timestamps")
    return np.asarray(out, dtype=np.int64)


def _resized(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return frame if size is None else fit_frame(frame, size)


def folder_frames(frames_dir: Path, timestamps: Path, unit: TimeUnit,
                  size: tuple[int, int] | None = None) -> FrameSequence:
    """The images of ``frames_dir`` (sorted by name) with the times of ``timestamps``.

    Raises:
        InputError: no folder, no images, a different number of images and timestamps, bad timestamps;
            images of different sizes (when ``size`` is not given) while reading. An unreadable image
            raises ``ImageError`` naming it.
    """
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise InputError(f"{frames_dir}: frame folder not found")
    paths = sorted(p for p in frames_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{frames_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    times = read_timestamps(timestamps, unit)
    if len(times) != len(paths):
        raise InputError(f"{frames_dir}: {len(paths)} images but {timestamps} has {len(times)} timestamps "
                         "(one per image needed)")

    def frames() -> Iterator[tuple[np.ndarray, int]]:
        shape = None
        for path, t in zip(paths, times, strict=True):
            img = _resized(read_image(path, grayscale=True), size)
            if shape is not None and img.shape != shape:
                raise InputError(f"{path}: {img.shape[1]}x{img.shape[0]}, the first image is {shape[1]}x{shape[0]} "
                                 "(pass a size to resize them all)")
            shape = img.shape
            yield img, int(t)

    return FrameSequence(str(frames_dir), len(paths), frames)


def video_frames(path: Path, timing: VideoTiming = "fps", fps: float | None = None,
                 size: tuple[int, int] | None = None) -> FrameSequence:
    """The frames of a video file and their times.

    Args:
        path: any file OpenCV's FFmpeg backend decodes.
        timing: ``"fps"``: ``t_i = round(i * 1e6 / fps)`` µs; ``"pos_msec"``: the decoder's position of
            each frame (``CAP_PROP_POS_MSEC``).
        fps: the frame rate for ``"fps"`` (default: the one the file declares).
        size: resize to cover ``(W, H)`` and crop the centre.

    Raises:
        InputError: the file is missing or not a video (checked here, by decoding the first frame), no
            frame rate for ``"fps"``, positions not increasing (while reading).
    """
    path = Path(path)
    if timing not in ("fps", "pos_msec"):
        raise InputError(f"video timing: expected 'fps' or 'pos_msec', got {timing!r}")
    if fps is not None and not fps > 0:
        raise InputError(f"fps: expected > 0, got {fps}")
    probe = open_video(path)
    count = int(probe.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    rate = fps or probe.fps
    probe.capture.release()
    if timing == "fps" and not rate:
        raise InputError(f"{path}: the video declares no frame rate (give one, or time by position)")

    def frames() -> Iterator[tuple[np.ndarray, int]]:
        video = open_video(path)
        cap, frame, i, prev = video.capture, video.first, 0, None
        try:
            while frame is not None:
                if timing == "fps":
                    t = round(i * 1_000_000 / rate)
                else:
                    t = round(float(cap.get(cv2.CAP_PROP_POS_MSEC)) * 1000)
                    if prev is not None and t <= prev:
                        raise InputError(f"{path}: frame {i}: decoder position {t} µs is not after the previous "
                                         f"frame's {prev} µs (time by the frame rate instead)")
                gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                yield _resized(gray, size), t
                prev, i = t, i + 1
                ok, frame = cap.read()
                frame = frame if ok else None
        finally:
            cap.release()

    return FrameSequence(str(path), count or None, frames)


def mean_flow_px(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean optical-flow magnitude (full-resolution px) from ``prev`` to ``cur`` ([H, W] uint8 or float in [0, 1])."""
    def small(img: np.ndarray) -> np.ndarray:
        u8 = img if img.dtype == np.uint8 else np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        if scale == 1:
            return u8
        return cv2.resize(u8, (round(u8.shape[1] * scale), round(u8.shape[0] * scale)), interpolation=cv2.INTER_AREA)

    scale = min(1.0, FLOW_MAX_SIDE / max(prev.shape[:2]))
    a, b = small(prev), small(cur)
    # pyramid 0.5 x 3 levels, 15 px window, 3 iterations, poly_n 5 / sigma 1.2 (OpenCV's sample values)
    flow = cv2.calcOpticalFlowFarneback(a, b, np.zeros((*a.shape, 2), np.float32), 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(np.linalg.norm(flow, axis=2).mean() / scale)
