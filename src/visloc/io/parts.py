"""Crash-safe staging of per-item results before they are committed to an HDF5 file.

Layout of the staging folder ``<out>.parts/``:

- ``<hh>/<sha1(name)>.npz``: one finished item, written atomically (temporary file + rename); its
  members are the item's arrays plus ``__name__``. ``hh`` (the first two hex digits of the hash)
  spreads a million items over 256 folders of about 4k files each.
- ``index-<pid>.tsv``: an append-only name index, one line ``sha1 <TAB> size <TAB> json(name)`` per
  staged part, appended by the staging process after the part's rename.
- ``job.json``: the record (part name + resolved conf) of the job that stages here, written by
  ``claim`` before its first part. A job with another record refuses the folder while it holds parts
  (``check_staged``): items made with two confs never meet in one file. Parts without a record (an
  older visloc, direct API use) are accepted as they are.

Listing the staged names (``staged_names``, used to resume) never opens an array: a part is named by
its index line when the line's hash is the hash of the name and its size is the part's size (one
``stat`` per part); a part without such a line (a kill between the rename and the append, a torn
last line, parts of an older visloc in the flat ``<out>.parts/*.npz`` layout) is named by reading
only its ``__name__`` member (``np.load`` is lazy per member). A part that cannot be named that way
(cut short, not a zip) is skipped, so its item is re-done. Damage inside an array member of a named
part (which an atomic rename alone cannot cause) surfaces when the commit loads it: the item is then
skipped with a warning, left out of the file, and re-done by the next run.

Committing removes only the parts it merged (or found unreadable, so that their items are re-done):
a part staged after the commit listed the folder stays for the next commit, and the folder goes
when no part is left.

Committing: ``visloc.io.shards.commit`` (cost proportional to the new items; used by the feature and
match stores) or ``merge_parts`` here (copies the existing file: kept for callers that list a file
with ``h5py``'s ``visititems``, which does not follow the shard store's external links).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from visloc.errors import VislocError
from visloc.io.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

NAME_KEY = "__name__"
RECORD_NAME = "job.json"
_PART_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
_HEX = frozenset("0123456789abcdef")

WriteFn = Callable[[h5py.File, str, dict[str, np.ndarray]], None]


class StagedConfError(VislocError, ValueError):
    """Staged parts of an interrupted run made with another conf than the job's."""


def write_group(fd: h5py.File, key: str, arrays: dict[str, np.ndarray]) -> None:
    """(Re)write group ``key`` of ``fd`` with one dataset per array."""
    if key in fd:
        del fd[key]
    grp = fd.create_group(key)
    for name, value in arrays.items():
        grp.create_dataset(name, data=value)


def parts_dir(out: Path) -> Path:
    """The staging folder of ``out``."""
    return out.with_name(out.name + ".parts")


def _hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _part_file(out: Path, name: str) -> Path:
    digest = _hash(name)
    return parts_dir(out) / digest[:2] / (digest + ".npz")


def write_part(out: Path, name: str, data: dict[str, np.ndarray]) -> None:
    """Stage one item's arrays atomically (restaging a name replaces its part)."""
    path = _part_file(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **{NAME_KEY: np.array(name)}, **data)
        size = tmp.stat().st_size
    # One short write per line: a kill can only tear the last line, which listing ignores.
    line = f"{path.stem}\t{size}\t{json.dumps(name)}\n"
    with open(parts_dir(out) / f"index-{os.getpid()}.tsv", "a", encoding="utf-8") as f:
        f.write(line)


def _scan(folder: Path) -> dict[Path, int]:
    """Every part file below ``folder`` (both layouts) -> its size in bytes."""
    found: dict[Path, int] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.endswith(".npz"):  # the flat layout of older versions
            found[Path(entry.path)] = entry.stat().st_size
        elif entry.is_dir() and len(entry.name) == 2 and set(entry.name) <= _HEX:
            for sub in os.scandir(entry.path):
                if sub.name.endswith(".npz") and sub.is_file():
                    found[Path(sub.path)] = sub.stat().st_size
    return found


def _read_index(folder: Path) -> dict[str, tuple[str, set[int]]]:
    """Hash -> (name, sizes the part had when staged), from every index file's complete lines."""
    index: dict[str, tuple[str, set[int]]] = {}
    for path in folder.glob("index-*.tsv"):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]  # drop a torn tail
        except OSError:
            continue
        for line in lines:
            fields = line.split("\t")
            if len(fields) != 3 or not fields[1].isdigit():
                continue
            try:
                name = json.loads(fields[2])
            except ValueError:
                continue
            if not isinstance(name, str) or _hash(name) != fields[0]:
                continue  # e.g. a torn line glued to the next one
            index.setdefault(fields[0], (name, set()))[1].add(int(fields[1]))
    return index


def _read_name(path: Path) -> str | None:
    """The ``__name__`` member of a part, or None if the part is unreadable; reads no other member."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z[NAME_KEY])
    except _PART_ERRORS:
        return None


def staged_entries(out: Path) -> list[tuple[str, Path]]:
    """``(name, part file)`` of every nameable staged part, sorted by file; no array is read."""
    folder = parts_dir(out)
    if not folder.is_dir():
        return []
    index = _read_index(folder)
    entries: list[tuple[str, Path]] = []
    for path, size in sorted(_scan(folder).items()):
        known = index.get(path.stem)
        name = known[0] if known is not None and size in known[1] else _read_name(path)
        if name is not None:
            entries.append((name, path))
    return entries


def staged_names(out: Path) -> set[str]:
    """Names of the items staged for ``out`` (reads the index and file sizes, not the arrays)."""
    return {name for name, _ in staged_entries(out)}


def staged_among(out: Path, names: Iterable[str]) -> set[str]:
    """Those of ``names`` that have a nameable staged part, whatever else ``out`` has staged.

    For a worker that resumes a slice of a large job (``staged_names`` lists every part): one ``stat``
    per name, and for a part that exists a read of its ``__name__`` member (a cut-short part fails it).
    """
    found: set[str] = set()
    for name in names:
        path = _part_file(out, name)
        if path.is_file() and _read_name(path) == name:
            found.add(name)
    return found


def load_part(path: Path) -> tuple[str, dict[str, np.ndarray]] | None:
    """``(name, arrays)`` of one part, or None (with a warning) if it cannot be read whole."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return str(arrays.pop(NAME_KEY)), arrays
    except _PART_ERRORS as e:  # e.g. a member damaged after its rename: the item is re-done later
        logger.warning("%s: skipping an unreadable staged part (%s)", path, str(e).splitlines()[0][:80])
        return None


def staged_parts(out: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield ``(name, arrays)`` of every readable staged part, loading one part at a time."""
    for _, path in staged_entries(out):
        item = load_part(path)
        if item is not None:
            yield item


def discard(out: Path) -> None:
    """Remove the staging folder of ``out`` with every part (to start afresh)."""
    shutil.rmtree(parts_dir(out), ignore_errors=True)


def discard_merged(out: Path, paths: Iterable[Path]) -> None:
    """Remove the part files ``paths`` (merged); the folder too once no nameable part is left in it."""
    for path in paths:
        path.unlink(missing_ok=True)
    if parts_dir(out).is_dir() and not staged_entries(out):
        discard(out)


def staged_record(out: Path) -> str | None:
    """The record ``claim`` left in the staging folder of ``out``, or None."""
    try:
        return (parts_dir(out) / RECORD_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _same_record(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def check_staged(out: Path, record: str, hint: str = "add --overwrite to discard them") -> None:
    """Raise ``StagedConfError`` if ``out`` has parts staged under another job record than ``record``.

    ``hint`` (what else the user can do, naming the command's option) ends the message.
    """
    found = staged_record(out)
    if found is None or _same_record(found, record):
        return
    entries = staged_entries(out)
    if not entries:
        return  # a record alone (a run that failed before its first item) blocks nothing
    try:
        other, mine = json.loads(found).get("name"), json.loads(record).get("name")
        what = f"another conf of {other}" if other == mine else str(other)
    except (ValueError, AttributeError):
        what = "an unreadable record"
    raise StagedConfError(f"{parts_dir(out)}: {len(entries)} items staged by an interrupted run with {what}; "
                          f"re-run it with that conf to finish them, or {hint}")


def claim(out: Path, record: str) -> None:
    """Record in the staging folder of ``out`` the conf its parts are made with (before the first part)."""
    found = staged_record(out)
    if found is None or not _same_record(found, record):
        atomic_write_text(parts_dir(out) / RECORD_NAME, record)


def merge_parts(out: Path, write: WriteFn, attrs: dict[str, str] | None = None) -> int:
    """Merge the staged parts into a copy of ``out``, rename it over ``out``; return how many were merged.

    Costs a copy of the existing file: the feature and match stores use ``visloc.io.shards.commit``.
    """
    entries = staged_entries(out)
    if not entries and not (attrs and not out.exists()):
        discard_merged(out, [])
        return 0
    n = 0
    with atomic_path(out) as tmp:
        if out.exists():
            shutil.copyfile(out, tmp)
        with h5py.File(tmp, "a", libver="latest") as fd:
            for key, value in (attrs or {}).items():
                fd.attrs[key] = value
            for _, path in entries:
                item = load_part(path)
                if item is not None:
                    write(fd, *item)
                    n += 1
    discard_merged(out, [path for _, path in entries])
    return n
