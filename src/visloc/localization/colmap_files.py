r"""COLMAP binary models read safely: every count is checked against the file's length first.

COLMAP's reader (``pycolmap.Reconstruction(path)``) trusts the counts in ``cameras.bin``,
``images.bin``, ``points3D.bin``, ``rigs.bin`` and ``frames.bin``: a file cut short or damaged makes
it allocate what a garbage count asks for (a ``points3D.bin`` cut to 100 bytes: 17.8 GB, then a
MemoryError). ``check_binary_model`` walks each file's records first, reading only the counts and
lengths (no array is allocated), and refuses a count that the bytes left cannot hold, an unknown
camera model, or bytes after the last record. ``read_reconstruction`` checks, then loads.

Layouts (little-endian, COLMAP 4 as written by pycolmap 4):

- ``cameras.bin``: ``u64 n``; per camera ``u32 id, i32 model, u64 width, u64 height, f64 params[k(model)]``.
- ``images.bin``: ``u64 n``; per image ``u32 id, f64 qvec[4], f64 tvec[3], u32 camera_id, name\0,
  u64 m, (f64 x, f64 y, i64 point3D_id)[m]``.
- ``points3D.bin``: ``u64 n``; per point ``u64 id, f64 xyz[3], u8 rgb[3], f64 error, u64 t,
  (u32 image_id, u32 point2D_idx)[t]``.
- ``rigs.bin``: ``u64 n``; per rig ``u32 id, u32 s``, if ``s > 0`` the reference sensor ``(i32 type,
  u32 id)`` and ``s - 1`` sensors ``(i32 type, u32 id, u8 has_pose, [f64 pose[7]])``.
- ``frames.bin``: ``u64 n``; per frame ``u32 id, u32 rig_id, f64 pose[7], u32 d, (i32 type, u32 id,
  u64 data_id)[d]``.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Callable
from pathlib import Path

import pycolmap

from visloc.errors import VislocError

_U8, _U32, _U64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<Q")
_I32 = struct.Struct("<i")
MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin")  # rigs.bin and frames.bin: COLMAP 4, optional


class ModelFileError(VislocError, ValueError):
    """A COLMAP model file that is missing, cut short or damaged."""


class _Reader:
    """Offsets into a mapped file; each read checks that the bytes are there."""

    def __init__(self, path: Path, data: bytes | mmap.mmap) -> None:
        self.path, self.data, self.pos, self.size = path, data, 0, len(data)

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.size - self.pos:
            raise ModelFileError(f"{self.path}: cut short or damaged: {what} at byte {self.pos} needs {nbytes} "
                                 f"bytes, {self.size - self.pos} left")

    def skip(self, nbytes: int, what: str) -> None:
        self.need(nbytes, what)
        self.pos += nbytes

    def unpack(self, fmt: struct.Struct, what: str) -> int:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return int(value)

    def count(self, record_min: int, what: str) -> int:
        """A ``u64`` record count, refused when ``count * record_min`` bytes cannot follow."""
        n = self.unpack(_U64, f"the number of {what}")
        if n * record_min > self.size - self.pos:
            raise ModelFileError(f"{self.path}: cut short or damaged: {n} {what} need at least {n * record_min} "
                                 f"bytes, {self.size - self.pos} left")
        return n

    def name(self, what: str) -> None:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ModelFileError(f"{self.path}: cut short or damaged: {what} at byte {self.pos} has no end")
        self.pos = end + 1


@functools.cache
def _num_params(model_id: int) -> int | None:
    try:
        return len(pycolmap.Camera.create_from_model_id(1, pycolmap.CameraModelId(model_id), 1.0, 1, 1).params)
    except (ValueError, TypeError, RuntimeError):
        return None


def _cameras(r: _Reader) -> None:
    for _ in range(r.count(24, "cameras")):
        r.skip(4, "a camera id")
        model = r.unpack(_I32, "a camera model")
        k = _num_params(model) if model >= 0 else None
        if k is None:
            raise ModelFileError(f"{r.path}: unknown camera model id {model} at byte {r.pos - 4} (damaged file)")
        r.skip(16 + 8 * k, "a camera's size and parameters")


def _images(r: _Reader) -> None:
    for _ in range(r.count(73, "images")):
        r.skip(64, "an image's id, pose and camera")
        r.name("an image name")
        m = r.unpack(_U64, "an image's number of points2D")
        r.skip(24 * m, f"{m} points2D")


def _points(r: _Reader) -> None:
    for _ in range(r.count(51, "points3D")):
        r.skip(43, "a point's id, position, colour and error")
        t = r.unpack(_U64, "a track length")
        r.skip(8 * t, f"a track of {t} elements")


def _rigs(r: _Reader) -> None:
    for _ in range(r.count(8, "rigs")):
        r.skip(4, "a rig id")
        s = r.unpack(_U32, "a rig's number of sensors")
        if s:
            r.skip(8, "a rig's reference sensor")
        for _ in range(max(s - 1, 0)):
            r.skip(8, "a rig sensor")
            if r.unpack(_U8, "a sensor's pose flag"):
                r.skip(56, "a sensor pose")


def _frames(r: _Reader) -> None:
    for _ in range(r.count(68, "frames")):
        r.skip(64, "a frame's ids and pose")
        d = r.unpack(_U32, "a frame's number of data ids")
        r.skip(16 * d, f"{d} data ids")


_WALKERS: dict[str, Callable[[_Reader], None]] = {"cameras.bin": _cameras, "images.bin": _images,
                                                  "points3D.bin": _points, "rigs.bin": _rigs,
                                                  "frames.bin": _frames}


def check_model_file(path: Path) -> None:
    """Walk one binary model file (named as COLMAP names it); ``ModelFileError`` on any inconsistency."""
    walk = _WALKERS[path.name]
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise ModelFileError(f"{path}: empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                r = _Reader(path, data)
                walk(r)
                if r.pos != r.size:
                    raise ModelFileError(f"{path}: {r.size - r.pos} bytes after the last record (damaged file)")
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def check_binary_model(folder: str | Path) -> Path:
    """Check every binary file of the COLMAP model in ``folder``; return ``folder``.

    Raises:
        ModelFileError: the folder or one of ``cameras.bin``, ``images.bin``, ``points3D.bin`` is
            missing, or a file is cut short or damaged (the message names the file and the byte).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: COLMAP model folder not found")
    for name in _WALKERS:
        path = folder / name
        if path.is_file():
            check_model_file(path)
        elif name in MODEL_FILES:
            raise ModelFileError(f"{path}: missing from the COLMAP model")
    return folder


def read_reconstruction(folder: str | Path) -> pycolmap.Reconstruction:
    """``pycolmap.Reconstruction`` of the binary model in ``folder``, checked first (``check_binary_model``).

    Raises:
        ModelFileError: a missing or damaged file, or a model COLMAP refuses (one line naming the folder).
    """
    folder = check_binary_model(folder)
    try:
        return pycolmap.Reconstruction(str(folder))
    except (RuntimeError, ValueError, MemoryError) as e:
        reason = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{folder}: COLMAP cannot read this model ({reason})") from None
