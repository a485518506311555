"""Matches in HDF5, in hloc's layout.

One group per pair, keyed by ``names_to_pair(name0, name1)``: ``name0/name1`` with each name's
``/`` replaced by ``-`` (hloc's convention; its older ``name0_name1`` keys are read too). Datasets:
``matches0`` ``(N0,)`` int32, the index in image 1 of each keypoint of image 0 or -1;
``matching_scores0`` ``(N0,)`` float16. Indices are int32: hloc's int16 overflows past 32,767.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from visloc.errors import VislocError
from visloc.io import parts, shards


class MatchStoreError(VislocError, ValueError):
    """A match file that is missing, corrupt or lacks a pair."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """Hloc's pair key."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """Hloc's legacy pair key."""
    return names_to_pair(name0, name1, separator="_")


def _write_group(fd: h5py.File, key: str, arrays: dict[str, np.ndarray]) -> None:
    if key in fd:
        del fd[key]
    grp = fd.create_group(key)
    grp.create_dataset("matches0", data=arrays["matches0"].astype(np.int32))
    grp.create_dataset("matching_scores0", data=arrays["matching_scores0"].astype(np.float16))


def stage_matches(path: str | Path, name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray) -> None:
    """Stage one pair's matches crash-safely; ``commit_matches`` merges them into ``path``."""
    parts.write_part(Path(path), names_to_pair(name0, name1),
                     {"matches0": np.asarray(matches0, np.int32), "matching_scores0": np.asarray(scores0)})


def commit_matches(path: str | Path, attrs: dict[str, str] | None = None) -> int:
    """Merge staged pairs into ``path`` atomically (root ``attrs`` set); return how many were added.

    Costs the staged data plus a copy of the small master (``visloc.io.shards``), not of the file.
    """
    return shards.commit(Path(path), _write_group, attrs)


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", libver="latest")
    except FileNotFoundError:
        raise MatchStoreError(f"{path}: match file not found") from None
    except OSError as e:
        raise MatchStoreError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0][:80]})") from None


def _find(fd: h5py.File, name0: str, name1: str) -> tuple[str, bool] | None:
    for key, reverse in ((names_to_pair(name0, name1), False), (names_to_pair(name1, name0), True),
                         (names_to_pair_old(name0, name1), False), (names_to_pair_old(name1, name0), True)):
        grp = shards.get_item(fd, key, MatchStoreError)
        if isinstance(grp, h5py.Group) and "matches0" in grp:
            return key, reverse
    return None


def has_pair(path: str | Path, name0: str, name1: str) -> bool:
    """Whether ``path`` holds the pair in either order (or it is staged)."""
    path = Path(path)
    if {names_to_pair(name0, name1), names_to_pair(name1, name0)} & parts.staged_names(path):
        return True
    if not path.exists():
        return False
    with _open(path) as fd:
        return _find(fd, name0, name1) is not None


def done_pairs(path: str | Path) -> set[str]:
    """Pair keys already in ``path`` or staged."""
    path = Path(path)
    keys = set(parts.staged_names(path))
    if path.exists():
        with _open(path) as fd:
            keys.update(shards.item_names(fd, ("matches0",)))
    return keys


def read_matches(path: str | Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matched index pairs ``[M, 2]`` (int64, image 0 then image 1) and their scores ``[M]``."""
    path = Path(path)
    with _open(path) as fd:
        found = _find(fd, name0, name1)
        if found is None:
            raise MatchStoreError(f"{path}: no matches for pair ({name0}, {name1})")
        key, reverse = found
        grp = fd[key]
        if not isinstance(grp, h5py.Group):  # _find checked it; a Group narrows h5py's union for the reads
            raise MatchStoreError(f"{path}: pair entry {key!r} is not a group (malformed file)")
        m0 = shards.read_array(grp, "matches0", MatchStoreError, path).astype(np.int64)
        s0 = shards.read_array(grp, "matching_scores0", MatchStoreError, path).astype(np.float32)
    idx = np.where(m0 != -1)[0]
    matches = np.stack([idx, m0[idx]], -1)
    scores = s0[idx]
    if reverse:
        matches = np.flip(matches, -1).copy()
    return matches, scores


def write_matches_file(path: str | Path, matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                       attrs: dict[str, str] | None = None) -> Path:
    """Write a whole match file at once, atomically: ``(name0, name1) -> (matches0 [N0], scores0 [N0])``."""
    from visloc.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as fd:
        for key, value in (attrs or {}).items():
            fd.attrs[key] = value
        for (name0, name1), (m0, s0) in matches.items():
            _write_group(fd, names_to_pair(name0, name1), {"matches0": m0, "matching_scores0": s0})
    shutil.rmtree(shards.shards_dir(path), ignore_errors=True)  # a former sharded layout
    return path
