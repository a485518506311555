"""Visual place recognition metrics: recall@N with positives within a radius in UTM metres.

The protocol of NetVLAD and of the visual geo-localization benchmark (Berton et al., CVPR 2022):
a database image is a positive of a query when their UTM positions lie within ``radius`` metres
(25 m by default), and recall@N is the fraction of queries with at least one positive among their
N first predictions. Positions are read from ``[N, 2]`` arrays (east, north) or from the benchmark's
file names ``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num@heading
@pitch@roll@height@timestamp@note@extension``.

Unlike the benchmark's ``test.py``, which divides by every query, queries without any positive are
left out of recall@N and counted apart (``RecallResult.without_positives``); with ``E`` of them out of
``Q``, the benchmark's value is ``recall * (Q - E) / Q``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from visloc.data.errors import DatasetError

RECALL_NS = (1, 5, 10, 20)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
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


def parse_vg_name(path: str | PurePath) -> tuple[float, float]:
    """UTM ``(east, north)`` in metres from a visual geo-localization benchmark file name.

    The name (the last path component) is ``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat
    @lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@extension``; only east and north
    are required, the other fields may be empty or missing.

    Raises:
        ValueError: The name does not start with ``@`` or its east / north are not decimal numbers;
            the message names ``path``.
    """
    fields = PurePath(path).name.split("@")
    if len(fields) < 3 or fields[0] != "":
        raise ValueError(f"{path}: not a visual geo-localization name '@UTM_east@UTM_north@...'")
    for axis, value in (("east", fields[1]), ("north", fields[2])):
        if not _NUMBER.fullmatch(value):
            raise ValueError(f"{path}: UTM {axis} {value!r} is not a decimal number")
    return float(fields[1]), float(fields[2])


def utm_from_names(names: Sequence[str | PurePath]) -> np.ndarray:
    """UTM positions ``[N, 2]`` (east, north) of visual geo-localization file names."""
    return np.array([parse_vg_name(n) for n in names], dtype=np.float64).reshape(-1, 2)


def read_vg_names(path: str | Path) -> np.ndarray:
    """UTM positions ``[N, 2]`` of the names listed in a text file, one per line (blank lines skipped).

    Raises:
        InputError: ``path`` does not exist or is not text.
        DatasetError: A name is malformed; the message names ``path`` and the name.
    """
    from visloc.io.arrays import read_lines

    names = read_lines(path, "image names")
    try:
        return utm_from_names(names)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from e
