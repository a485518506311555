"""Crash-safe staging of per-item results before they are merged into one HDF5 file.

Each finished item is written as its own ``.npz`` (atomic rename) in ``<out>.parts/``. The merge
copies the existing HDF5 (if any) and the parts into a temporary file, then renames it over
``<out>`` and removes the parts. A run killed at any moment therefore leaves ``<out>`` either as it
was or complete, and the finished parts of an interrupted run are picked up by the next one.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from visloc.io.atomic import atomic_path

NAME_KEY = "__name__"


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


def _part_file(out: Path, name: str) -> Path:
    return parts_dir(out) / (hashlib.sha1(name.encode()).hexdigest() + ".npz")


def write_part(out: Path, name: str, data: dict[str, np.ndarray]) -> None:
    """Stage one item's arrays atomically."""
    path = _part_file(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{NAME_KEY: np.array(name)}, **data)


def staged_parts(out: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield ``(name, arrays)`` of every readable staged part (unreadable ones are skipped)."""
    folder = parts_dir(out)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # e.g. cut short by a full disk
            continue
        yield str(arrays.pop(NAME_KEY)), arrays


def staged_names(out: Path) -> set[str]:
    """Names of the items staged for ``out``."""
    return {name for name, _ in staged_parts(out)}


def merge_parts(out: Path, write: Callable[[h5py.File, str, dict[str, np.ndarray]], None],
                attrs: dict[str, str] | None = None) -> int:
    """Merge the staged parts into ``out`` atomically, setting root ``attrs``; return how many were merged."""
    parts = list(staged_parts(out))
    if not parts and not (attrs and not out.exists()):
        shutil.rmtree(parts_dir(out), ignore_errors=True)
        return 0
    with atomic_path(out) as tmp:
        if out.exists():
            shutil.copyfile(out, tmp)
        with h5py.File(tmp, "a", libver="latest") as fd:
            for key, value in (attrs or {}).items():
                fd.attrs[key] = value
            for name, arrays in parts:
                write(fd, name, arrays)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    return len(parts)
