"""What the ``visloc data ... download`` commands share: a state file, an end-of-run summary, progress bars.

Network-free (the fetching is ``io.download``'s, imported by the commands' own modules only):

- :class:`DownloadState`: one JSON file recording each archive's status (``missing``, ``partial``,
  ``downloaded``, ``verified``, ``extracted`` or ``failed`` with its reason, plus counts), written atomically
  at every change and shared by the worker threads; a re-run skips what is done and retries what failed.
- :class:`DownloadSummary`: archives done now, found done, and failed with their reasons; ``ok`` only when
  nothing is failed, so the CLI exits 1 while anything is.
- :class:`TransferBars`: two tqdm bars on stderr, bytes received (with the rate) and files done of the total
  (with the rate and ETA), updated from any thread.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from visloc.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

Status = Literal["missing", "partial", "downloaded", "verified", "extracted", "failed"]


class DownloadState:
    """The state file ``path``: ``{key: {name: {"status": ..., "reason"?: ..., counts...}}}``.

    An unreadable file is logged and started over (the finished files on disk are kept, and found again).
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                self.entries = {str(k): dict(v) for k, v in data.get(key, {}).items()}
            except (ValueError, AttributeError, TypeError):
                logger.warning("%s: unreadable state file, starting over (finished files are kept)", path)

    def status(self, name: str) -> str:
        """The status of ``name`` (``missing`` when never recorded)."""
        with self.lock:
            return str(self.entries.get(name, {}).get("status", "missing"))

    def entry(self, name: str) -> dict[str, Any]:
        """A copy of the record of ``name`` (empty when never recorded)."""
        with self.lock:
            return dict(self.entries.get(name, {}))

    def set(self, name: str, status: Status, reason: str = "", **counts: int) -> None:
        """Record ``name``'s status (with the one-line reason of a failure, and counts) and write the file."""
        with self.lock:
            self.entries[name] = {"status": status, **({"reason": reason} if reason else {}), **counts}
            atomic_write_text(self.path, json.dumps({self.key: self.entries}, indent=1, sort_keys=True))


@dataclass
class DownloadSummary:
    """The end of a run: archives done now, found done, and failed with the reason; ``notes`` add lines.

    Attributes:
        label: what ran, e.g. ``gldv2 download``.
        unit: what is counted, e.g. ``tars``.
        folder: where the files are.
    """

    label: str
    unit: str
    folder: Path
    done: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is still failed."""
        return not self.failed

    def lines(self) -> list[str]:
        """The summary, the notes, then one line per failure."""
        head = (f"{self.label}: {len(self.done)} {self.unit} done now, {len(self.already_done)} already done, "
                f"{len(self.failed)} failed -> {self.folder}")
        return [head, *(f"  {n}" for n in self.notes),
                *(f"  failed {name}: {why}" for name, why in sorted(self.failed.items()))]


class TransferBars:
    """Bytes received (size and rate) and files done of ``total_files`` (rate and ETA), on stderr.

    A context manager; ``enabled=False`` draws nothing (the counts still add up, for tests).
    """

    def __init__(self, total_files: int, desc: str, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.lock = threading.Lock()
        self.bytes = tqdm(desc=f"{desc} bytes", unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                          dynamic_ncols=True, position=0)
        self.files = tqdm(desc=f"{desc} files", total=total_files, unit="file", disable=not enabled,
                          dynamic_ncols=True, position=1)
        self.received = 0
        self.finished = 0

    def add_bytes(self, n: int) -> None:
        """``n`` more bytes received (``io.download``'s ``progress`` callback)."""
        with self.lock:
            self.received += n
            self.bytes.update(n)

    def file_done(self) -> None:
        """One more file finished (extracted, verified or failed: the ETA counts what is left)."""
        with self.lock:
            self.finished += 1
            self.files.update(1)

    def close(self) -> None:
        """Close both bars."""
        self.bytes.close()
        self.files.close()

    def __enter__(self) -> TransferBars:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["DownloadState", "DownloadSummary", "Status", "TransferBars"]
