"""Validation of Event-VPR training: recall@N within ``radius_m`` of query traversals against database ones.

The VG benchmark's protocol (``retrieval.recall``): every database and query window is encoded
(eval mode, no grad), database places are ranked by inner product of the L2-normalised descriptors (the
same order as faiss ``IndexFlatL2``), and a query counts as found at ``N`` when one of its ``N`` first
places lies within ``radius_m`` metres (``positives_within_radius``, inclusive). Queries without any
database place within the radius are left out (``recall_at_n``'s convention; ``num_evaluated`` says how
many count). Database and queries are different traversals of one drive (``val.database`` /
``val.queries``), so a query never meets its own traversal's neighbouring windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from visloc.errors import InputError
from visloc.events.drive_dataset import PlaceWindows
from visloc.retrieval.recall import positives_within_radius, recall_at_n
from visloc.train.event_vpr.data import PlaceSet, WindowStore, drive_store, open_drives

#: place rows ``[n]`` -> descriptors ``[n, D]`` (no grad)
Encode = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class ValSet:
    """A validation drive: its places, window store, and the database / query rows."""

    places: PlaceSet
    store: WindowStore
    database: np.ndarray
    queries: np.ndarray


def open_val(root: str, spec: PlaceWindows, database: Sequence[str] = (), queries: Sequence[str] = (),
             capacity: int = 0) -> ValSet:
    """The validation drive ``root``: ``database`` traversals (empty: the first), ``queries`` (empty: the rest).

    Raises:
        InputError: not an event drive, fewer than two traversals, or an empty side (one line).
    """
    wanted = tuple(database) + tuple(queries) if queries else ()  # no queries named: every traversal is read
    places, source = open_drives([root], spec, wanted, where="val.root")
    names = [name for _, name in places.names]
    db_names = list(database) or names[:1]
    q_names = list(queries) or [n for n in names if n not in db_names]
    db, q = places.of(db_names), places.of(q_names)
    if not len(db) or not len(q):
        raise InputError(f"val.root: {root}: needs database and query places (traversals {names}; database "
                         f"{db_names}, queries {q_names})")
    return ValSet(places, drive_store(places, source, capacity), db, q)


def recall(encode: Encode, vset: ValSet, radius_m: float = 25.0, ns: Sequence[int] = (1, 5, 10)
           ) -> dict[str, float]:
    """``recall@N`` for each ``N`` (those up to the database size), and ``num_evaluated`` (module docstring)."""
    db = encode(vset.database).float()
    q = encode(vset.queries).float()
    ns = [n for n in ns if n <= len(db)]
    k = max(ns)
    pred = torch.topk(q @ db.T, k, dim=1).indices.numpy().astype(np.int64)
    xy = vset.places.xy
    positives = positives_within_radius(xy[vset.database], xy[vset.queries], radius_m)
    result = recall_at_n(pred, positives, ns, num_database=len(db))
    out = {f"recall@{n}": float(v) for n, v in result.recall.items()}
    return out | {"num_evaluated": float(result.num_queries - len(result.without_positives))}


__all__ = ["ValSet", "open_val", "recall"]
