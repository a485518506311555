"""Place recognition recall: positives within a radius in metres, recall@N (VG benchmark, NetVLAD).

A database place is a positive of a query when their positions (``[N, 2]`` metres in one metric frame:
UTM east / north, or a world's ENU x / y) lie within ``radius`` metres, inclusive; recall@N is the fraction
of queries with at least one positive among their N first predictions. Queries without any positive are
left out of recall@N and counted apart (``RecallResult.without_positives``); with ``E`` of them out of
``Q``, the VG benchmark's ``test.py`` value is ``recall * (Q - E) / Q``. ``eval.place_recognition``
re-exports these with the benchmark's file-name parsing; training recipes import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECALL_NS = (1, 5, 10, 20)
_BRUTE_FORCE_ELEMENTS = 1 << 22  # distances computed at once by the numpy fallback


@dataclass(frozen=True)
class RecallResult:
    """Recall@N of a place recognition run.

    Attributes:
        recall: ``{N: fraction}`` over the queries with at least one positive (``nan`` if none).
        num_queries: All queries.
        without_positives: Indices of the queries without any positive, left out of ``recall``.
        first_hit: Per query ``[nq]``, the 0-based position of the first positive among the
            predictions; ``-1`` when none is predicted or the query has no positive.
    """

    recall: dict[int, float]
    num_queries: int
    without_positives: tuple[int, ...]
    first_hit: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of fractions; ``nan`` becomes ``None``."""
        out: dict[str, Any] = {f"recall@{n}": None if np.isnan(v) else float(v) for n, v in self.recall.items()}
        out.update({"num_queries": self.num_queries, "num_evaluated": self.num_queries - len(self.without_positives),
                    "queries_without_positives": list(self.without_positives)})
        return out


def check_utm(x: object, name: str) -> np.ndarray:
    """``x`` as finite float64 UTM positions ``[N, 2]`` (east, north), else ``ValueError`` naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2] (UTM east, north in metres), got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _within_radius_kdtree(db: np.ndarray, queries: np.ndarray, radius: float) -> list[np.ndarray]:
    from scipy.spatial import KDTree

    hits = KDTree(db).query_ball_point(queries, r=radius, return_sorted=True)
    return [np.asarray(h, dtype=np.int64) for h in hits]


def _within_radius_brute(db: np.ndarray, queries: np.ndarray, radius: float) -> list[np.ndarray]:
    rows = max(1, _BRUTE_FORCE_ELEMENTS // max(len(db), 1))
    out = []
    for start in range(0, len(queries), rows):
        diff = queries[start:start + rows, None, :] - db[None, :, :]
        d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2
        out += [np.flatnonzero(row) for row in d2 <= radius * radius]
    return [o.astype(np.int64) for o in out]


def positives_within_radius(db_utm: np.ndarray, query_utm: np.ndarray, radius: float = 25.0) -> list[np.ndarray]:
    """Database images within ``radius`` metres (inclusive) of each query.

    Uses ``scipy.spatial.KDTree`` when scipy is installed, else a chunked numpy brute force; both
    compare squared distances with ``radius ** 2``.

    Args:
        db_utm: Database positions ``[D, 2]``, UTM east and north in metres.
        query_utm: Query positions ``[Q, 2]`` in the same UTM zone.
        radius: Positive distance threshold in metres.

    Returns:
        ``Q`` sorted int64 vectors of database indices.
    """
    db = check_utm(db_utm, "db_utm")
    queries = check_utm(query_utm, "query_utm")
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be positive and finite, got {radius}")
    if len(db) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(len(queries))]
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return _within_radius_brute(db, queries, float(radius))
    return _within_radius_kdtree(db, queries, float(radius))


def _check_pred(pred: object, num_queries: int, num_database: int | None) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.ndim != 2 or arr.shape[0] != num_queries:
        raise ValueError(f"predictions must have shape [nq={num_queries}, K], got {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"predictions must hold integer database indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < -1:
        raise ValueError("predictions must hold database indices, or -1 for an empty slot")
    if num_database is not None and arr.size and arr.max() >= num_database:
        raise ValueError(f"predictions hold database index {int(arr.max())}, "
                         f"but the database has {num_database} images")
    return arr.astype(np.int64, copy=False)


def recall_at_n(pred: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = RECALL_NS,
                num_database: int | None = None) -> RecallResult:
    """Fraction of queries with a positive among their first N predictions, for each N.

    Args:
        pred: Predicted database indices ``[nq, K]``, best first; ``-1`` marks an empty slot (as
            faiss returns when fewer than K neighbours exist).
        positives: ``nq`` vectors of positive database indices (e.g. ``positives_within_radius``).
        ns: Cut-offs ``N``, each in ``[1, K]``.
        num_database: Database size, to check the indices of ``pred``.
    """
    arr = _check_pred(pred, len(positives), num_database)
    ns = tuple(int(n) for n in ns)
    if not ns or any(n < 1 or n > arr.shape[1] for n in ns):
        raise ValueError(f"each N must lie in [1, K={arr.shape[1]}] (the predictions per query), got {list(ns)}")
    first_hit = np.full(len(positives), -1, dtype=np.int64)
    without = []
    for q, pos in enumerate(positives):
        pos = np.asarray(pos)
        if pos.size == 0:
            without.append(q)
            continue
        hits = np.flatnonzero(np.isin(arr[q], pos))
        if len(hits):
            first_hit[q] = hits[0]
    valid = np.ones(len(positives), dtype=bool)
    valid[without] = False
    hit_rank = np.where(first_hit[valid] >= 0, first_hit[valid], np.iinfo(np.int64).max)
    recall = {n: float(np.mean(hit_rank < n)) if valid.any() else float("nan") for n in ns}
    return RecallResult(recall, len(positives), tuple(without), first_hit)


__all__ = ["RECALL_NS", "RecallResult", "check_utm", "positives_within_radius", "recall_at_n"]
