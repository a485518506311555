"""Checks on a job's output before any work: it cannot destroy an input, and it can be written.

An existing output is replaced or extended only when it is the job's own kind of file: an HDF5
feature file for ``extract``, an HDF5 match file for ``match-features``, a text file for pairs and
poses, the file a command writes (a faiss index, a vocabulary, a PCA) for the others
(``check_file_output``). Anything else (a photo, a match file given as ``--out`` of ``extract``, a directory) is
refused, ``--overwrite`` or not. The output's folder (or the nearest existing folder above it) must
be a writable folder. Each check raises ``OutputError`` with one line naming the file and the option.
"""

from __future__ import annotations

import codecs
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import h5py

from visloc.errors import VislocError

H5Kind = Literal["features", "matches"]
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_FEATURE_MEMBERS = ("keypoints", "global_descriptor")
_MATCH_MEMBERS = ("matches0",)
_ATTRS = {"visloc_matcher": "matches", "visloc_extractor": "features"}
_TEXT_PROBE = 1 << 16
#: how the image files OpenCV writes begin (PNG, JPEG, BMP, TIFF, WebP)
IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\0", b"MM\0*", b"RIFF")


class OutputError(VislocError, ValueError):
    """An output that would destroy something else, or that cannot be written."""


def check_writable(out: Path, option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` can be created: its nearest existing folder is a writable folder."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir would fail on it
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{out}: {parent} is not a folder; choose another {option}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write in {parent} (permission denied); choose another {option}")


def _existing_file(out: Path, what: str, option: str) -> bool:
    """Whether ``out`` exists as a regular file; ``OutputError`` when it exists as something else."""
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; {option} must name a {what} file")
    if out.exists() and not out.is_file():
        raise OutputError(f"{out}: exists and is not a regular file; choose another {option}")
    return out.exists()


def _first_member_kind(fd: h5py.File, names: list[str]) -> str | None:
    for name in names[:1]:
        grp = fd.get(name)
        if isinstance(grp, h5py.Group):
            keys = set(grp.keys())
            if keys & set(_MATCH_MEMBERS):
                return "matches"
            if keys & set(_FEATURE_MEMBERS):
                return "features"
    return None


def h5_kind(path: Path) -> str | None:
    """``features``, ``matches`` or ``empty`` for an HDF5 store, None when ``path`` is not HDF5 (or unreadable)."""
    from visloc.io import shards

    try:
        with open(path, "rb") as f:
            if f.read(len(HDF5_MAGIC)) != HDF5_MAGIC:
                return None
        with h5py.File(path, "r", libver="latest") as fd:
            names = shards.item_names(fd, _FEATURE_MEMBERS + _MATCH_MEMBERS)
            kind = _first_member_kind(fd, names)
            if kind is None:  # no item, or its shard is missing: the attributes say what the file was made for
                kind = next((k for a, k in _ATTRS.items() if a in fd.attrs), "empty" if not names else None)
            return kind
    except (OSError, KeyError, ValueError):
        return None


def check_h5_output(out: str | Path, kind: H5Kind, option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` is absent or an HDF5 file of ``kind``, in a writable folder."""
    out = Path(out)
    what = "feature" if kind == "features" else "match"
    if _existing_file(out, f"HDF5 {what}", option):
        found = h5_kind(out)
        if found is None:
            raise OutputError(f"{out}: exists and is not an HDF5 {what} file; refusing to replace it "
                              f"(choose another {option})")
        if found not in (kind, "empty"):
            raise OutputError(f"{out}: holds {found}, not {kind}; refusing to replace it (choose another {option})")
    check_writable(out, option)


def is_text(path: Path) -> bool:
    """Whether the start of ``path`` reads as UTF-8 text without NUL bytes (photos and HDF5 files do not)."""
    with open(path, "rb") as f:
        head = f.read(_TEXT_PROBE)
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the probe's end
    except UnicodeDecodeError:
        return False
    return True


def check_text_output(out: str | Path, what: str, option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` is absent or a text file (pairs, poses...), in a writable folder."""
    out = Path(out)
    if _existing_file(out, what, option) and not is_text(out):
        raise OutputError(f"{out}: exists and is not a text {what} file; refusing to replace it "
                          f"(choose another {option})")
    check_writable(out, option)


def check_file_output(out: str | Path, what: str, accepts: Callable[[Path], bool], option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` is absent or a regular file that ``accepts``, in a writable folder.

    Args:
        out: the output file.
        what: its kind, for the message (``faiss index``, ``VLAD vocabulary``...).
        accepts: whether an existing file is of that kind (and may be replaced).
        option: the command's option that names ``out``.
    """
    out = Path(out)
    if _existing_file(out, what, option) and not accepts(out):
        raise OutputError(f"{out}: exists and is not a {what} file; refusing to replace it (choose another {option})")
    check_writable(out, option)


def has_magic(path: Path, *magics: bytes) -> bool:
    """Whether ``path`` starts with one of ``magics`` (False when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(max(map(len, magics)))
    except OSError:
        return False
    return any(head.startswith(m) for m in magics)


def check_picture_output(out: str | Path, inputs: Sequence[str | Path], option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` is absent or a picture that is none of ``inputs``, in a writable folder."""
    out = Path(out)
    for path in inputs:
        with contextlib.suppress(OSError):  # either is missing: not the same file
            if out.samefile(path):
                raise OutputError(f"{out}: is an input image; refusing to replace it (choose another {option})")
    check_file_output(out, "picture", lambda p: has_magic(p, *IMAGE_MAGICS), option)


def check_folder_output(out: str | Path, option: str = "--out") -> None:
    """Raise ``OutputError`` unless ``out`` is absent (and can be created) or a folder that can be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; {option} must name a folder (choose another {option})")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write in it (permission denied); choose another {option}")
    check_writable(out, option)
