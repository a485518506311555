"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from visloc.errors import InputError


def tmp_prefix(path: Path) -> str:
    """The name prefix of the temporary files ``atomic_path`` makes beside ``path``."""
    return f".{path.name}."


def _umask() -> int:
    """The process's file-creation mask: from /proc on Linux, else by setting and restoring it (no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (``0o666`` less the umask)."""
    return 0o666 & ~_umask()


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is left as it was. A process killed
    inside the block leaves a ``.<name>.*.tmp`` file beside ``path`` (``path`` itself untouched).

    Args:
        path: the file to (re)place.
        durable: fsync the file before the rename and its folder after it, so that a power loss
            cannot publish a name whose data never reached the disk (a kill alone never can).

    Raises:
        InputError: ``path``'s folder cannot be created or written (permissions, a file in the way).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"{path}: cannot write here ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; a published file gets the permissions a plain open() would have given it
        os.chmod(tmp_path, publish_mode())
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
