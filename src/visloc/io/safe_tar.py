"""Safe, all-or-nothing extraction of a downloaded tar (GLDv2's ``images_NNN.tar``, revisitop's ``.tgz`` / ``.tar.gz``).

:func:`extract_tar` refuses the whole archive, before writing anything into ``dest``, when a member is a
link (symbolic or hard), a device, a FIFO, or has a path that is absolute or climbs out with ``..``; when two
members would land on the same file; when the caller's ``check`` of the plan raises; and, for a compressed
archive (gzip, bzip2, xz: tarfile detects which), when the compressed stream is not whole: it is read to its
end first, so that its CRC is checked (tarfile stops at the tar's end marker and never reads the gzip trailer,
so a flipped byte inside a member would otherwise be extracted silently).
Every other member goes through Python's tarfile ``data`` filter, which also drops setuid bits and
ownership. The archive is extracted into a temporary folder beside ``dest``, then each file is moved into
place with ``os.replace``: GLDv2's tars share folders (``0/0/0/...``), so one folder rename cannot
publish a tar, but no file is ever seen half-written and a kill mid-way leaves only whole files (a re-run
extracts the tar again, with the same bytes). The caller records a tar as extracted only after the call
returns.

The ``data`` filter alone allows links that stay inside the destination; DELF's and MindSpore's
scripts run ``tar -xf`` with no check at all. Image archives have no business holding links, so they
are refused here.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from visloc.errors import VislocError


class UnsafeArchiveError(VislocError, ValueError):
    """An archive with a member visloc will not extract, or one that cannot be read."""


#: the compressed formats tarfile reads, by their magic bytes
_COMPRESSED: tuple[tuple[bytes, Callable[[Path], object]], ...] = (
    (b"\x1f\x8b", lambda p: gzip.open(p, "rb")),
    (b"BZh", lambda p: bz2.open(p, "rb")),
    (b"\xfd7zXZ\x00", lambda p: lzma.open(p, "rb")),
)


def _check_stream(tar_path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Read a compressed archive to its end (its CRC checked); a plain tar has no stream check."""
    with open(tar_path, "rb") as f:
        head = f.read(6)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            try:
                with cast(BinaryIO, opener(tar_path)) as stream:
                    while stream.read(chunk_bytes):
                        pass
            except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
                raise UnsafeArchiveError(f"{tar_path}: corrupt or truncated compressed archive "
                                         f"({type(e).__name__}: {e})") from None
            return


def _safe_path(tar_path: Path, name: str, what: str) -> None:
    p = PurePosixPath(name)
    if not p.parts or p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or ":" in p.parts[0]:
        raise UnsafeArchiveError(f"{tar_path}: {what} {name!r} has an unsafe path; refusing the whole archive")


def _check_member(tar_path: Path, m: tarfile.TarInfo) -> None:
    kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "device" if m.isdev() else
            "FIFO" if m.isfifo() else None)
    if kind is not None:
        raise UnsafeArchiveError(f"{tar_path}: member {m.name!r} is a {kind}; refusing the whole archive")
    _safe_path(tar_path, m.name, "member")


def _plan(tar_path: Path, members: list[tarfile.TarInfo],
          target: Callable[[str], str | None] | None) -> dict[str, tarfile.TarInfo]:
    """``{path under dest: member}`` of the file members ``target`` keeps; two members on one path refuse all."""
    plan: dict[str, tarfile.TarInfo] = {}
    for m in members:
        if not m.isfile():
            continue
        to = str(PurePosixPath(m.name)) if target is None else target(m.name)
        if to is None:
            continue
        _safe_path(tar_path, to, f"target of member {m.name!r}")
        to = str(PurePosixPath(to))
        if to in plan:
            raise UnsafeArchiveError(f"{tar_path}: members {plan[to].name!r} and {m.name!r} would both be written "
                                     f"to {to!r}; refusing the whole archive")
        plan[to] = m
    return plan


def extract_tar(tar_path: str | Path, dest: str | Path, *, target: Callable[[str], str | None] | None = None,
                check: Callable[[Mapping[str, str]], None] | None = None) -> list[str]:
    """Extract ``tar_path`` into ``dest`` (module docstring) and return the files written, relative, sorted.

    Args:
        tar_path: a tar, plain or compressed (gzip, bzip2, xz).
        dest: the folder written into (created).
        target: where a file member goes under ``dest``, from the member's name (None: skipped); by default its
            own path. Flattening sub-folders is ``lambda name: PurePosixPath(name).name``.
        check: called with the plan, ``{path under dest: member name}``, before anything is written; what it
            raises refuses the archive and propagates as is.

    Raises:
        UnsafeArchiveError: a refused member or target (nothing is written to ``dest``), or an unreadable or
            corrupt archive (one line naming the file).
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise UnsafeArchiveError(f"{tar_path}: archive not found")
    _check_stream(tar_path)
    try:
        with tarfile.open(tar_path) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(tar_path, m)
            plan = _plan(tar_path, members, target)
            if check is not None:
                check({to: m.name for to, m in plan.items()})
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".extract-{tar_path.name}-", dir=dest))
            try:
                tf.extractall(tmp, members=list(plan.values()), filter="data")
                for to, m in plan.items():
                    (dest / to).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / m.name, dest / to)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"{tar_path}: {e}; refusing the whole archive") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UnsafeArchiveError(f"{tar_path}: not a readable tar archive ({type(e).__name__}: {e})") from None
    return sorted(plan)


__all__ = ["UnsafeArchiveError", "extract_tar"]
