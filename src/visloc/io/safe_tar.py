"""Safe, all-or-nothing extraction of a downloaded tar (GLDv2's ``images_NNN.tar``, revisitop's archives).

:func:`extract_tar` refuses the whole archive, before writing anything into ``dest``, when a member is a
link (symbolic or hard), a device, a FIFO, or has a path that is absolute or climbs out with ``..``.
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

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from visloc.errors import VislocError


class UnsafeArchiveError(VislocError, ValueError):
    """An archive with a member visloc will not extract, or one that cannot be read."""


def _check_member(tar_path: Path, m: tarfile.TarInfo) -> None:
    kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "device" if m.isdev() else
            "FIFO" if m.isfifo() else None)
    if kind is not None:
        raise UnsafeArchiveError(f"{tar_path}: member {m.name!r} is a {kind}; refusing the whole archive")
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")) or ":" in (p.parts[0] if p.parts else ""):
        raise UnsafeArchiveError(f"{tar_path}: member {m.name!r} has an unsafe path; refusing the whole archive")


def extract_tar(tar_path: str | Path, dest: str | Path) -> list[str]:
    """Extract ``tar_path`` into ``dest`` (module docstring) and return the files written, relative, sorted.

    Raises:
        UnsafeArchiveError: a refused member (nothing is written to ``dest``), or an unreadable archive
            (one line naming the file).
    """
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        with tarfile.open(tar_path) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(tar_path, m)
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".extract-{tar_path.name}-", dir=dest))
            try:
                tf.extractall(tmp, members=members, filter="data")
                written = []
                for m in members:
                    if not m.isfile():
                        continue
                    target = dest / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / m.name, target)
                    written.append(str(PurePosixPath(m.name)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"{tar_path}: {e}; refusing the whole archive") from None
    except (tarfile.TarError, EOFError) as e:
        raise UnsafeArchiveError(f"{tar_path}: not a readable tar archive ({type(e).__name__}: {e})") from None
    except FileNotFoundError:
        raise UnsafeArchiveError(f"{tar_path}: archive not found") from None
    return sorted(written)


__all__ = ["UnsafeArchiveError", "extract_tar"]
