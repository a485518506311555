"""Video in and out: frames read on a background thread, annotated videos written atomically.

- ``open_video(source)`` opens a video file (a ``Path``) or a camera (an ``int`` id) with
  ``cv2.VideoCapture`` and checks that it delivers a first frame; a file that is missing or that
  OpenCV cannot decode, and a camera that will not open, raise ``InputError`` with one line.
- ``FrameReader`` reads the frames on a daemon thread into a bounded queue. From a file it reads
  every frame in order (the thread waits while the queue is full); from a camera it keeps only the
  newest frames (an old one is dropped for a new one), so that a slow consumer sees low latency.
- ``VideoOut`` writes BGR frames with ``cv2.VideoWriter`` (mp4v) to a temporary file beside the
  target, renamed onto it when closed with ``publish=True``.
- ``fit_frame`` resizes to cover a target size and crops the centre (aspect ratio kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visloc.errors import InputError
from visloc.io.atomic import publish_mode, tmp_prefix

logger = logging.getLogger(__name__)

#: the name of every reader thread (tests check that none is left alive)
THREAD_NAME = "visloc-frame-reader"


def describe(source: Path | int) -> str:
    """``camera ID`` or the file's path, for messages."""
    return f"camera {source}" if isinstance(source, int) else str(source)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines while opening (the error raised says what went wrong, in one line)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


@dataclass
class OpenedVideo:
    """An opened capture, its first frame, and what it is.

    Attributes:
        capture: the ``cv2.VideoCapture`` (or an object with ``read()`` and ``release()``).
        first: the first frame, ``[H, W, 3]`` uint8 BGR.
        live: True for a camera (drop old frames), False for a file (every frame in order).
        fps: the frame rate the source declares (0 when unknown).
        name: ``camera ID`` or the file's path, for messages.
    """

    capture: Any
    first: np.ndarray
    live: bool
    fps: float
    name: str


def open_video(source: Path | int) -> OpenedVideo:
    """Open a video file or a camera and read its first frame.

    Raises:
        InputError: the file does not exist, OpenCV cannot decode it, or the camera does not open or
            delivers no frame.
    """
    name = describe(source)
    if isinstance(source, int):
        if source < 0:
            raise InputError(f"{name}: expected a camera id >= 0")
    elif not source.is_file():
        raise InputError(f"{name}: video file not found")
    with _quiet_opencv():
        cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok or frame is None:
        cap.release()
        if isinstance(source, int):
            raise InputError(f"{name}: cannot open (no such device, in use, or no permission)")
        raise InputError(f"{name}: cannot decode as a video (OpenCV read no frame)")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return OpenedVideo(cap, frame, isinstance(source, int), fps if np.isfinite(fps) and fps > 0 else 0.0, name)


class FrameReader:
    """Frames of an opened video, read on a daemon thread; use as a context manager (``close`` joins it).

    Args:
        video: from ``open_video`` (its first frame is the first one ``read`` returns).
        queue_size: frames buffered; for a camera the oldest is dropped when the queue is full.
    """

    _END = object()

    def __init__(self, video: OpenedVideo, queue_size: int = 4) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        self.video = video
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._queue.put(video.first)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        """Queue ``item``: a camera drops the oldest frame when full, a file waits (until stopped)."""
        drop = self.video.live and item is not self._END
        while not self._stop.is_set():
            try:
                if drop:
                    self._queue.put_nowait(item)
                else:
                    self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if drop:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
                        self.dropped += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ok, frame = self.video.capture.read()
                if not ok or frame is None:
                    break
                self._put(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)
        self._put(self._END)

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame ``[H, W, 3]`` uint8 BGR, or None at the end of the video.

        Raises:
            TimeoutError: no frame came within ``timeout`` seconds.
            Exception: what the reading thread raised.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.video.name}: no frame within {timeout} s") from None
        if item is self._END:
            self._queue.put(item)  # later reads see the end too
            return None
        if isinstance(item, Exception):
            raise item
        return item

    @property
    def alive(self) -> bool:
        """Whether the reading thread is still running."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread, wait for it, release the capture. Safe to call twice."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # a capture stuck in read(): the daemon thread dies with the process
            logger.warning("%s: the reading thread did not stop within 5 s", self.video.name)
        else:
            self.video.capture.release()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoOut:
    """An mp4v video written to a temporary file beside ``path``; ``close(publish=True)`` renames it onto ``path``.

    The writer opens on the first frame (its size fixes the video's). A video with no frame is
    never published.

    Args:
        path: the video to write (``.mp4``; the suffix picks the container).
        fps: frames per second recorded in the file.
    """

    def __init__(self, path: Path, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self._writer: Any = None
        self._tmp: Path | None = None
        self._size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(self.path), suffix=".tmp" + self.path.suffix,
                                       dir=self.path.parent)
        except OSError as e:
            raise InputError(f"{self.path}: cannot write here ({e.strerror or type(e).__name__})") from None
        os.close(fd)
        self._tmp = Path(tmp)
        with _quiet_opencv():
            self._writer = cv2.VideoWriter(tmp, cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (width, height))
        if not self._writer.isOpened():
            self.close(publish=False)
            raise InputError(f"{self.path}: OpenCV cannot write an mp4v video with this suffix (use .mp4)")
        self._size = (width, height)
        return self._writer

    def write(self, frame: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 BGR frame (every frame of the size of the first)."""
        h, w = frame.shape[:2]
        writer = self._writer if self._writer is not None else self._open(w, h)
        if self._size is not None and (w, h) != self._size:
            raise ValueError(f"frame: expected {self._size[0]}x{self._size[1]}, got {w}x{h}")
        writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self, publish: bool = True) -> Path | None:
        """Finish the file; with ``publish`` and at least one frame rename it onto ``path`` and return ``path``."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return None
        if publish and self.frames:
            os.chmod(tmp, publish_mode())
            os.replace(tmp, self.path)
            return self.path
        tmp.unlink(missing_ok=True)
        return None


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``frame`` to cover ``size = (W, H)`` with its aspect ratio kept, then crop the centre to it.

    Area interpolation when shrinking, linear otherwise. ``[h, w, C]`` in, ``[H, W, C]`` out, same dtype.
    """
    width, height = size
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    s = max(width / w, height / h)
    new_w, new_h = max(width, round(w * s)), max(height, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    x0, y0 = (new_w - width) // 2, (new_h - height) // 2
    return out[y0:y0 + height, x0:x0 + width]
