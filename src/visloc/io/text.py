"""Text inputs read with one clear error: ``read_text(path, error)`` (UTF-8, the file and byte named).

A pairs, poses, cameras or image-list file that is not UTF-8 (a binary file given by mistake, a Latin-1
export) raises the caller's error class with one line naming the file and the byte offset, instead of a
bare ``UnicodeDecodeError``; a directory or an unreadable file likewise.
"""

from __future__ import annotations

from pathlib import Path

from visloc.errors import VislocError


def read_text(path: str | Path, error: type[VislocError], what: str = "file") -> str:
    """The UTF-8 text of ``path``; ``error(one line)`` when it is missing, a folder, unreadable or not UTF-8.

    Args:
        path: the file.
        error: the exception class to raise (the reader's own, e.g. ``PairsError``).
        what: what the file is, for the message (``pairs file``...).
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text {what} (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


__all__ = ["read_text"]
