"""Places of event drives, the triplets' split rule, lazily read windows, and the query loader.

``PlaceSet`` flattens the places (``events.drive_dataset.EventTraversal.places``) of every used traversal of
one or more drives into ``P`` rows. ``build_pairs`` applies the split rule, by true metric distance (metres,
compared with ``positives_within_radius`` against the radius, never a squared distance against it):

- a query of traversal ``T`` of drive ``R`` looks only at the *database* traversals of ``R`` other than
  ``T``: neighbouring windows of one traversal never pair up, and positions of different drives (other
  cities, other splits) are never compared;
- its positives are those places within ``positive_m`` (10 m, inclusive), its negatives those farther than
  ``negative_m`` (25 m); places in between are neither (VG benchmark's soft positives);
- a query without a positive, or without a negative, is dropped (as the VG benchmark drops those without a
  hard positive).

``WindowStore`` reads a place's events (``EventTraversal.read``) when asked, keeping the most recently used
ones in memory. The loader yields batches of query rows (``QueryIds``) in a seeded, resumable, DDP-dealt
order (``train.datasets.sharded``); the module mines the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.errors import InputError
from visloc.events.drive_dataset import EventTraversal, Places, PlaceWindows, read_event_drive
from visloc.events.stream import EventStream
from visloc.retrieval.recall import positives_within_radius


@dataclass(frozen=True)
class PlaceSet:
    """``P`` places of one or more drives.

    Attributes:
        xy: ``[P, 2]`` float64 camera positions at the windows' ends, world ENU metres (x east, y north).
        drive: ``[P]`` int64 index of the place's drive (positions compare only within one drive).
        traversal: ``[P]`` int64 index into ``names``.
        index: ``[P]`` int64 the place's index in its traversal's ``Places``.
        names: ``(drive root, traversal name)`` of each traversal index.
        conditions: the condition of each traversal index (``day``, ``night`` ...).
    """

    xy: np.ndarray
    drive: np.ndarray
    traversal: np.ndarray
    index: np.ndarray
    names: tuple[tuple[str, str], ...]
    conditions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.xy)

    def of(self, traversals: Sequence[str]) -> np.ndarray:
        """Rows of the traversals named ``traversals`` (any drive), in order."""
        ids = [i for i, (_, name) in enumerate(self.names) if name in set(traversals)]
        return np.flatnonzero(np.isin(self.traversal, ids))


@dataclass(frozen=True)
class DriveSource:
    """Where each traversal index of a ``PlaceSet`` reads its windows from."""

    traversals: tuple[EventTraversal, ...]
    places: tuple[Places, ...]
    sensor_size: tuple[int, int]

    def read(self, places: PlaceSet, row: int) -> EventStream:
        """The events of place ``row``."""
        t = int(places.traversal[row])
        return self.traversals[t].read(self.places[t], int(places.index[row]))


def open_drives(roots: Sequence[str], spec: PlaceWindows, traversals: Sequence[str] = (),
                where: str = "data.roots") -> tuple[PlaceSet, DriveSource]:
    """The places of ``traversals`` (empty: all) of the drives ``roots``, and their window source.

    Raises:
        InputError: a folder that is not an event drive, a named traversal missing, mixed sensor sizes
            (one line, naming the field ``where``).
    """
    rows: list[tuple[np.ndarray, int, int]] = []
    names, conditions, sources, all_places = [], [], [], []
    size: tuple[int, int] | None = None
    for d, root in enumerate(roots):
        if not Path(root).is_dir():
            raise InputError(f"{where}[{d}]: {root}: no such folder (make one: visloc data world event-drive)")
        try:
            drive = read_event_drive(root)
        except InputError as e:
            raise InputError(f"{where}[{d}]: {e}") from None
        if size is not None and drive.sensor_size != size:
            raise InputError(f"{where}[{d}]: {root} has sensor {drive.sensor_size}, the others {size}")
        size = drive.sensor_size
        missing = sorted(set(traversals) - set(drive.traversals))
        if traversals and len(missing) == len(set(traversals)):
            raise InputError(f"{where}[{d}]: {root} has none of the traversals {list(traversals)} "
                             f"(it has {', '.join(drive.traversals)})")
        for name, trav in drive.traversals.items():
            if traversals and name not in traversals:
                continue
            places = trav.places(spec)
            rows.append((places.xy, d, len(names)))
            names.append((str(root), name))
            conditions.append(trav.condition)
            sources.append(trav)
            all_places.append(places)
    if size is None or not rows:
        raise InputError(f"{where}: no event drive folder given")
    xy = np.concatenate([r[0] for r in rows]).astype(np.float64).reshape(-1, 2)
    drive_ids = np.concatenate([np.full(len(r[0]), r[1], np.int64) for r in rows])
    trav_ids = np.concatenate([np.full(len(r[0]), r[2], np.int64) for r in rows])
    index = np.concatenate([np.arange(len(r[0]), dtype=np.int64) for r in rows])
    place_set = PlaceSet(xy, drive_ids, trav_ids, index, tuple(names), tuple(conditions))
    return place_set, DriveSource(tuple(sources), tuple(all_places), size)


@dataclass(frozen=True)
class Pairs:
    """The split rule's result (module docstring).

    Attributes:
        queries: ``[Q]`` rows of the usable queries.
        positives: per query, its positive rows (sorted).
        negatives: per query, its negative rows (sorted).
    """

    queries: np.ndarray
    positives: tuple[np.ndarray, ...]
    negatives: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.queries)


def build_pairs(places: PlaceSet, positive_m: float, negative_m: float, queries: Sequence[str] = (),
                database: Sequence[str] = ()) -> Pairs:
    """Queries with their positives (within ``positive_m`` metres) and negatives (beyond ``negative_m``).

    Args:
        places: the places.
        positive_m: positive radius, metres (inclusive).
        negative_m: negatives lie strictly farther, metres.
        queries: traversal names whose places are queries (empty: all).
        database: traversal names positives and negatives come from (empty: all); never the query's own.

    Raises:
        InputError: no query has both a positive and a negative.
    """
    if not 0 < positive_m < negative_m:
        raise ValueError(f"expected 0 < positive_m < negative_m, got {positive_m}, {negative_m}")
    q_rows = places.of(queries) if queries else np.arange(len(places))
    db_rows = places.of(database) if database else np.arange(len(places))
    kept, pos_out, neg_out = [], [], []
    for t in np.unique(places.traversal[q_rows]):
        q = q_rows[places.traversal[q_rows] == t]
        drive = places.drive[q[0]]
        db = db_rows[(places.drive[db_rows] == drive) & (places.traversal[db_rows] != t)]
        pos = positives_within_radius(places.xy[db], places.xy[q], positive_m)
        near = positives_within_radius(places.xy[db], places.xy[q], negative_m)
        for i, row in enumerate(q):
            negatives = np.setdiff1d(db, db[near[i]])
            if len(pos[i]) and len(negatives):
                kept.append(int(row))
                pos_out.append(np.sort(db[pos[i]]))
                neg_out.append(negatives)
    if not kept:
        raise InputError(f"training data: no query has a positive within {positive_m} m and a negative beyond "
                         f"{negative_m} m in another traversal of its drive ({len(places)} places in "
                         f"{len(places.names)} traversals)")
    order = np.argsort(kept, kind="stable")
    return Pairs(np.asarray(kept, np.int64)[order], tuple(pos_out[i] for i in order),
                 tuple(neg_out[i] for i in order))


class WindowStore:
    """Place row -> its event window, read on demand, the ``capacity`` most recently used kept in memory.

    Args:
        read: reads the window of one row.
        capacity: windows kept (0: none).
    """

    def __init__(self, read: Callable[[int], EventStream], capacity: int = 0) -> None:
        self.read, self.capacity = read, capacity
        self._lru: OrderedDict[int, EventStream] = OrderedDict()
        self.reads = 0

    def __getitem__(self, row: int) -> EventStream:
        row = int(row)
        hit = self._lru.get(row)
        if hit is not None:
            self._lru.move_to_end(row)
            return hit
        window = self.read(row)
        self.reads += 1
        if self.capacity:
            self._lru[row] = window
            if len(self._lru) > self.capacity:
                self._lru.popitem(last=False)
        return window

    def many(self, rows: Sequence[int] | np.ndarray) -> list[EventStream]:
        """The windows of ``rows``, in order."""
        return [self[int(r)] for r in rows]


def drive_store(places: PlaceSet, source: DriveSource, capacity: int) -> WindowStore:
    """A ``WindowStore`` over the drives' event files."""
    return WindowStore(lambda row: source.read(places, row), capacity)


class QueryIds(Dataset):
    """Item ``i`` is ``i``: the position of a query in ``Pairs.queries`` (the module mines its triplet)."""

    def __init__(self, num_queries: int) -> None:
        self.n = num_queries

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i, dtype=torch.int64)


__all__ = ["DriveSource", "Pairs", "PlaceSet", "QueryIds", "WindowStore", "build_pairs", "drive_store",
           "open_drives"]
