"""One writer per output: a job holds an exclusive lock on its output for its whole life.

The lock is an ``fcntl.flock`` on ``.<out name>.lock`` beside the output (the output itself may not
exist yet, and it is replaced by renames). ``flock`` locks belong to the open file: the kernel drops
them when the process dies, SIGKILL included, so a killed job never leaves a stale lock. The lock
file is removed on release; a process that opened it just before the removal notices that the file
it locked is no longer the one at the path, and tries again.

A second writer fails at once (``OutputLockedError``, one line naming the output), it never waits:
two jobs writing one output would mix or lose each other's items. Readers take no lock. Within one
process a lock held on an output is re-entrant (a pipeline that calls another on the same output).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from visloc.errors import VislocError
from visloc.io.outputs import check_writable

_HELD: dict[str, int] = {}  # lock path -> times this process holds it
_GUARD = threading.Lock()


class OutputLockedError(VislocError, RuntimeError):
    """Another process is writing the same output."""


def lock_path(out: Path) -> Path:
    """The lock file of ``out`` (``.`` or ``..`` name their folder, whose lock lies beside it)."""
    if out.name in ("", ".", ".."):
        out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.lock")


def _acquire(path: Path, out: Path, option: str) -> int:
    """Open and lock ``path``; the descriptor is that of the file at ``path`` when it returns."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputLockedError(f"{out}: cannot create the lock file {path.name} beside it "
                                    f"({e.strerror}); check that {option}'s folder is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputLockedError(f"{out}: another visloc job is writing it (lock {path.name}); wait for it "
                                    f"to finish or choose another {option}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed it between our open and our lock: lock the new file
    raise OutputLockedError(f"{out}: its lock file {path.name} keeps changing; is another job starting on it?")


@contextlib.contextmanager
def output_lock(out: str | Path, option: str = "--out") -> Iterator[Path]:
    """Hold the exclusive writer lock of ``out`` for the block; yield ``out``.

    Args:
        out: the output file (need not exist; its folder is created).
        option: the command's option that names ``out``, for the message.

    Raises:
        OutputError: ``out``'s folder cannot be created or written (``io.outputs.check_writable``).
        OutputLockedError: another process holds the lock, or the lock file cannot be created.
    """
    out = Path(out)
    check_writable(out, option)
    path = lock_path(out)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _GUARD:
        if key in _HELD:
            _HELD[key] += 1
            fd = -1
        else:
            fd = _acquire(path, out, option)
            _HELD[key] = 1
    try:
        yield out
    finally:
        with _GUARD:
            _HELD[key] -= 1
            if _HELD[key] == 0:
                del _HELD[key]
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        path.unlink()  # unlink before unlocking: a waiter then sees a changed inode
                    os.close(fd)
