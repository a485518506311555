"""Place recognition across traversals of one route: nearest neighbours, recall@N per traversal and per condition.

The protocol of the visual geo-localization benchmark (Berton et al., CVPR 2022, ``test.py``), as
``eval.place_recognition`` implements it: the database is one traversal's places, the queries another
traversal's; a database place is a positive of a query when their positions (metric, e.g. world ENU
metres) lie within ``radius_m`` (25 m, inclusive); the neighbours are exact L2 neighbours of the
descriptors (faiss ``IndexFlatL2``, as the benchmark); recall@N counts a query when any of its first N
neighbours is a positive. Queries without any positive are left out and counted apart
(``RecallResult.without_positives``).

Rows: one per query traversal, then one per query condition, pooling the queries of every traversal of
that condition (its recall is over the pooled queries, not a mean of the traversals' recalls). The tables
leave out a condition's row when it pools a single traversal (it repeats that traversal's row); the rows
themselves (and the JSON) keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from visloc.conf import ConfError
from visloc.eval.place_recognition import RECALL_NS, RecallResult, positives_within_radius, recall_at_n


@dataclass(frozen=True)
class RecallProtocol:
    """Positives and cut-offs of a place recognition evaluation.

    Attributes:
        radius_m: a database place within this distance (metres, inclusive) of a query is a positive.
        ns: the N of recall@N.
    """

    radius_m: float = 25.0
    ns: tuple[int, ...] = RECALL_NS

    def __post_init__(self) -> None:
        if not 0 < self.radius_m < float("inf"):
            raise ConfError(f"RecallProtocol.radius_m: expected metres > 0, got {self.radius_m}")
        if not self.ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.ns):
            raise ConfError(f"RecallProtocol.ns: expected cut-offs >= 1, got {list(self.ns)}")


@dataclass(frozen=True)
class DescribedPlaces:
    """The places of one traversal with their descriptors.

    Attributes:
        traversal, condition: the traversal's name and condition (``day``, ``dusk``, ``night`` ...).
        xy: ``[P, 2]`` float64 positions in a metric frame (metres).
        descriptors: ``[P, D]`` float32, compared by L2 distance (L2-normalised ones rank as cosine).
    """

    traversal: str
    condition: str
    xy: np.ndarray
    descriptors: np.ndarray

    def __post_init__(self) -> None:
        xy, d = np.asarray(self.xy), np.asarray(self.descriptors)
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
            raise ValueError(f"{self.traversal}: xy must be finite [P, 2] metres, got shape {list(xy.shape)}")
        if d.ndim != 2 or len(d) != len(xy) or not np.all(np.isfinite(d)):
            raise ValueError(f"{self.traversal}: descriptors must be finite [P={len(xy)}, D], got shape "
                             f"{list(d.shape)}")

    def __len__(self) -> int:
        return len(self.xy)


@dataclass(frozen=True)
class RecallRow:
    """Recall@N of one method on one set of queries against the database traversal.

    Attributes:
        method: ``events`` or a frame baseline's label (``hfnet-global`` ...).
        database, database_condition: the database traversal and its condition.
        queries: the query traversal, or for a pooled row the condition's traversals joined by ``+``.
        query_condition: the queries' condition.
        pooled: True for the row of a condition (every query traversal of it).
        result: recall@N, with the queries left out for want of a positive.
    """

    method: str
    database: str
    database_condition: str
    queries: str
    query_condition: str
    pooled: bool
    result: RecallResult

    @property
    def pair(self) -> str:
        """``day->night``: database condition to query condition."""
        return f"{self.database_condition}->{self.query_condition}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (fractions, ``nan`` as ``None``)."""
        return {"method": self.method, "database": self.database, "database_condition": self.database_condition,
                "queries": self.queries, "query_condition": self.query_condition, "pooled": self.pooled,
                **self.result.to_json()}


def nearest_neighbours(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest database rows of each query by exact L2 distance (faiss ``IndexFlatL2``), nearest first.

    Args:
        database: ``[M, D]`` descriptors.
        queries: ``[Q, D]`` descriptors.
        k: neighbours per query (``>= 1``); past ``M`` the slots are ``-1``.

    Returns:
        ``[Q, k]`` int64 database indices.
    """
    db = np.ascontiguousarray(database, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if db.ndim != 2 or q.ndim != 2 or db.shape[1] != q.shape[1]:
        raise ValueError(f"database [M, D] and queries [Q, D] must share D, got {list(db.shape)} and {list(q.shape)}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    out = np.full((len(q), k), -1, dtype=np.int64)
    if len(db) == 0 or len(q) == 0:
        return out
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    _, found = index.search(q, min(k, len(db)))
    out[:, :found.shape[1]] = found
    return out


def _recall(database: DescribedPlaces, queries: Sequence[DescribedPlaces], protocol: RecallProtocol
            ) -> RecallResult:
    """Recall@N of the pooled ``queries`` (their rows in order) against ``database``."""
    k = max(protocol.ns)
    q_desc = np.concatenate([q.descriptors for q in queries])
    q_xy = np.concatenate([q.xy for q in queries])
    pred = nearest_neighbours(database.descriptors, q_desc, k)
    positives = positives_within_radius(database.xy, q_xy, protocol.radius_m)
    return recall_at_n(pred, positives, protocol.ns, len(database))


def recall_rows(method: str, database: DescribedPlaces, queries: Sequence[DescribedPlaces],
                protocol: RecallProtocol | None = None) -> list[RecallRow]:
    """One row per query traversal, then one per query condition (pooled), in the order the conditions first appear.

    Raises:
        ValueError: a query traversal is the database traversal, is given twice, or has another descriptor size.
    """
    protocol = protocol or RecallProtocol()
    names = [q.traversal for q in queries]
    if database.traversal in names:
        raise ValueError(f"{database.traversal}: the database traversal cannot be a query traversal")
    if len(set(names)) != len(names):
        raise ValueError(f"query traversals must be distinct, got {names}")
    for q in queries:
        if q.descriptors.shape[1] != database.descriptors.shape[1]:
            raise ValueError(f"{q.traversal}: descriptors of size {q.descriptors.shape[1]}, the database's have "
                             f"{database.descriptors.shape[1]}")
    rows = [RecallRow(method, database.traversal, database.condition, q.traversal, q.condition, False,
                      _recall(database, [q], protocol)) for q in queries]
    for condition in dict.fromkeys(q.condition for q in queries):
        group = [q for q in queries if q.condition == condition]
        rows.append(RecallRow(method, database.traversal, database.condition, "+".join(q.traversal for q in group),
                              condition, True, _recall(database, group, protocol)))
    return rows


def _chance(database: DescribedPlaces, queries: Sequence[DescribedPlaces], protocol: RecallProtocol
            ) -> RecallResult:
    """Expected recall@N of a uniformly random ranking of the database, for the pooled ``queries``."""
    q_xy = np.concatenate([q.xy for q in queries])
    positives = positives_within_radius(database.xy, q_xy, protocol.radius_m)
    m = len(database)
    counts = np.array([len(p) for p in positives], dtype=np.int64)
    valid = counts > 0
    recall = {}
    for n in protocol.ns:
        # P(no positive among the first n of a random permutation) = prod_i (m - c - i) / (m - i), i < min(n, m)
        miss = np.ones(len(counts))
        for i in range(min(n, m)):
            miss *= np.clip(m - counts - i, 0, None) / (m - i)
        recall[n] = float(np.mean(1.0 - miss[valid])) if valid.any() else float("nan")
    without = tuple(int(i) for i in np.flatnonzero(~valid))
    return RecallResult(recall, len(q_xy), without, np.full(len(q_xy), -1, dtype=np.int64))


def chance_rows(database: DescribedPlaces, queries: Sequence[DescribedPlaces],
                protocol: RecallProtocol | None = None) -> list[RecallRow]:
    """The rows of ``recall_rows`` for a random ranking (method ``chance``): the expected recall@N.

    A query with ``c`` positives among ``M`` database places is found in the first ``N`` with probability
    ``1 - prod_{i < N} (M - c - i) / (M - i)``; on a route not much longer than the radius this is high, and
    a method's recall means something only above it. ``first_hit`` is ``-1`` (no ranking). Descriptors are
    not used.
    """
    protocol = protocol or RecallProtocol()
    rows = [RecallRow("chance", database.traversal, database.condition, q.traversal, q.condition, False,
                      _chance(database, [q], protocol)) for q in queries]
    for condition in dict.fromkeys(q.condition for q in queries):
        group = [q for q in queries if q.condition == condition]
        rows.append(RecallRow("chance", database.traversal, database.condition, "+".join(q.traversal for q in group),
                              condition, True, _chance(database, group, protocol)))
    return rows


def _percent(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.1f}"


def shown(rows: Sequence[RecallRow]) -> list[RecallRow]:
    """``rows`` without the pooled rows of a single traversal (they repeat that traversal's row)."""
    return [r for r in rows if not (r.pooled and "+" not in r.queries)]


def table_rows(rows: Sequence[RecallRow], ns: Sequence[int]) -> tuple[list[str], list[list[str]]]:
    """The header and cells of ``rows``: method, database -> queries, recall@N in percent, queries."""
    head = ["method", "database", "queries", "conditions", *[f"R@{n}" for n in ns], "queries (no positive)"]
    cells = [[r.method, r.database, ("all " + r.query_condition) if r.pooled else r.queries, r.pair,
              *[_percent(r.result.recall[n]) for n in ns],
              f"{r.result.num_queries} ({len(r.result.without_positives)})"] for r in rows]
    return head, cells


def format_table(rows: Sequence[RecallRow], ns: Sequence[int]) -> str:
    """``rows`` as an aligned plain-text table (recall in percent), without repeated rows (``shown``)."""
    head, cells = table_rows(shown(rows), ns)
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(line, widths, strict=True)).rstrip() for line in [head, *cells]]
    return "\n".join(lines)


def markdown_table(rows: Sequence[RecallRow], ns: Sequence[int]) -> str:
    """``rows`` as a Markdown table (recall in percent), without repeated rows (``shown``)."""
    head, cells = table_rows(shown(rows), ns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


__all__ = ["DescribedPlaces", "RecallProtocol", "RecallRow", "chance_rows", "format_table", "markdown_table",
           "nearest_neighbours", "recall_rows", "shown", "table_rows"]
