"""Stage two of retrieval evaluation: cached rankings or predictions on disk -> metrics -> JSON.

``evaluate_retrieval`` scores ``.npy`` rankings (or similarities) against the Oxford / Paris ground
truth; ``evaluate_index`` searches a saved index with the queries' global descriptors (optionally
re-ranking the top ``K`` by geometric verification) and scores that ranking; ``evaluate_recall``
scores place recognition predictions against UTM positions. Every error
about an input is one line that names its file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from visloc.data.errors import DatasetError
from visloc.data.oxford_paris import OxfordParisGnd, load_gnd
from visloc.errors import InputError
from visloc.eval import place_recognition as pr
from visloc.eval import retrieval
from visloc.io.arrays import load_npy
from visloc.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from visloc.retrieval.rerank import RerankConf

RetrievalProtocol = Literal["revisited", "classic"]


@dataclass(frozen=True)
class RetrievalReport:
    """Oxford / Paris metrics of one ranking and the files they came from."""

    protocol: str
    gnd: Path
    source: Path
    num_queries: int
    num_database: int
    results: dict[str, retrieval.RetrievalResult]
    rerank: int = 0

    def header(self) -> str:
        """One line: protocol, ground truth and sizes."""
        rerank = f", top {self.rerank} re-ranked" if self.rerank else ""
        return (f"{self.protocol} protocol on {self.gnd.name} ({self.num_queries} queries, "
                f"{self.num_database} database images), ranking {self.source.name}{rerank}")

    def text(self) -> str:
        """The header and ``retrieval.format_report`` (percent)."""
        return self.header() + "\n" + retrieval.format_report(self.results)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (fractions, ``nan`` as ``None``)."""
        return {"protocol": self.protocol, "gnd": str(self.gnd), "source": str(self.source),
                "num_queries": self.num_queries, "num_database": self.num_database, "rerank": self.rerank,
                "results": retrieval.report_json(self.results)}

    def write(self, path: str | Path) -> Path:
        """Write the JSON report atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))


def _ranks(gt: OxfordParisGnd, ranks_path: Path | None, scores_path: Path | None) -> tuple[np.ndarray, Path]:
    """Ranks ``[n_ranked, nq]`` from a ranks file, or from a scores file ``[nq, db]``."""
    nq, db = len(gt.qimlist), len(gt.imlist)
    if scores_path is not None:
        scores = load_npy(scores_path, "scores")
        if scores.shape != (nq, db) or scores.dtype.kind not in "iuf":
            raise InputError(f"{scores_path}: scores must be numbers of shape [nq={nq}, db={db}], got "
                             f"{scores.dtype} {list(scores.shape)}")
        try:
            return retrieval.ranks_from_scores(scores), scores_path
        except ValueError as e:
            raise InputError(f"{scores_path}: {e}") from e
    if ranks_path is None:
        raise InputError("give exactly one of ranks or scores")
    ranks = load_npy(ranks_path, "ranks")
    try:
        return retrieval.check_ranks(ranks, nq, db), ranks_path
    except ValueError as e:
        raise InputError(f"{ranks_path}: {e}") from e


def evaluate_retrieval(gnd_path: str | Path, *, ranks_path: str | Path | None = None,
                       scores_path: str | Path | None = None, protocol: RetrievalProtocol = "revisited",
                       kappas: Sequence[int] = retrieval.KAPPAS) -> RetrievalReport:
    """Oxford / Paris metrics of a ranking given as ranks or as similarity scores.

    Args:
        gnd_path: ``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl`` (or the original ``gnd_oxford5k.pkl``).
        ranks_path: ``.npy`` database indices ``[n_ranked, nq]``, best first (revisitop layout).
        scores_path: Or ``.npy`` similarities ``[nq, db]``; ties rank the lower index first.
        protocol: ``revisited`` (Easy / Medium / Hard) or ``classic`` (good + ok vs junk).
        kappas: Cut-offs of mP@k and mR@k.
    """
    if (ranks_path is None) == (scores_path is None):
        raise InputError("give exactly one of ranks or scores")
    _check_protocol(protocol, kappas)
    gt = load_gnd(gnd_path)
    ranks, source = _ranks(gt, None if ranks_path is None else Path(ranks_path),
                           None if scores_path is None else Path(scores_path))
    if protocol == "revisited" and not gt.is_revisited:
        raise DatasetError(f"{gt.path}: no 'easy' / 'hard' / 'junk' annotation; use the classic protocol")
    evaluate = retrieval.evaluate_revisited if protocol == "revisited" else retrieval.evaluate_classic
    results = evaluate(ranks, gt.gnd, kappas, len(gt.imlist))
    return RetrievalReport(protocol, gt.path, source, len(gt.qimlist), len(gt.imlist), results)


def _check_protocol(protocol: str, kappas: Sequence[int]) -> None:
    """The option values of a retrieval evaluation; ``InputError`` names the bad one."""
    if protocol not in ("revisited", "classic"):
        raise InputError(f"protocol: expected revisited or classic, got {protocol!r}")
    if not kappas or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in kappas):
        raise InputError(f"k: expected cut-offs >= 1, got {list(kappas)}")


def _name_lookup(names: Sequence[str]) -> Callable[[str], int | None]:
    """Index of a file name in ``names``, matched exactly or by its path without the extension.

    Revisitop's lists name images without extension (``all_souls_000013``) where feature files and
    indexes name the files (``all_souls_000013.jpg``).
    """
    positions = {n: i for i, n in enumerate(names)}

    def lookup(name: str) -> int | None:
        found = positions.get(name)
        if found is None and PurePosixPath(name).suffix:
            found = positions.get(str(PurePosixPath(name).with_suffix("")))
        return found

    return lookup


def ranks_from_pairs(pairs: Sequence[tuple[str, str]], qimlist: Sequence[str], imlist: Sequence[str]) -> np.ndarray:
    """Revisitop ranks ``[n_ranked, nq]`` from ranked ``(query, db)`` name pairs, best first per query.

    Column ``q`` lists, in the order of the pairs, the ``imlist`` indices of query ``qimlist[q]``'s
    database images; names match exactly or without their extension. Every column is cut to the
    shortest list (an approximate index may return fewer results for some queries); the pairs of a
    query not in ``qimlist`` are ignored.

    Raises:
        ValueError: a query of ``qimlist`` without pairs, a database name not in ``imlist``, or a
            database image listed twice for a query.
    """
    query_of, db_of = _name_lookup(qimlist), _name_lookup(imlist)
    columns: list[list[int]] = [[] for _ in qimlist]
    for q, d in pairs:
        qi = query_of(q)
        if qi is None:
            continue
        di = db_of(d)
        if di is None:
            raise ValueError(f"database image {d!r} (retrieved for {q!r}) is not in the ground truth's imlist")
        columns[qi].append(di)
    empty = [qimlist[i] for i, col in enumerate(columns) if not col]
    if empty:
        raise ValueError(f"query {empty[0]!r} has no retrieved database image")
    n = min(len(col) for col in columns)
    ranks = np.array([col[:n] for col in columns], dtype=np.int64).T
    return retrieval.check_ranks(ranks, len(qimlist), len(imlist))


def _query_descriptors(features: Path, qimlist: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The feature file's names and global descriptors of the ``qimlist`` queries, in its order."""
    from visloc.io import features_h5
    from visloc.retrieval.index import global_descriptors

    lookup = _name_lookup(qimlist)
    names = [n for n in features_h5.list_feature_names(features) if lookup(n) is not None]
    found = {lookup(n) for n in names}
    missing = [q for i, q in enumerate(qimlist) if i not in found]
    if missing:
        raise InputError(f"{features}: no features for query {missing[0]!r} of the ground truth")
    return global_descriptors(features, names)


def evaluate_index(gnd_path: str | Path, index_path: str | Path, features: str | Path, *,
                   protocol: RetrievalProtocol = "revisited", kappas: Sequence[int] = retrieval.KAPPAS,
                   rerank: RerankConf | None = None) -> RetrievalReport:
    """Search every database image of a saved index for the ground truth's queries and score the ranking.

    Args:
        gnd_path: ground truth (``gnd_*.pkl`` or the JSON of ``visloc.data.landmarks``).
        index_path: index written by ``pipelines.retrieve.build_index`` over the database images.
        features: feature file holding the global descriptors of every query of the ground truth.
        protocol: ``revisited`` (Easy / Medium / Hard) or ``classic``.
        kappas: Cut-offs of mP@k and mR@k.
        rerank: re-ranking of each query's first results by inliers (``retrieval.rerank.RerankConf``);
            None or ``top=0``: none.

    Index and query names match the ground truth's names exactly or without their extension; the
    index must hold only database images of the ground truth.
    """
    from visloc.pipelines.retrieve import rerank_pairs
    from visloc.retrieval.index import RetrievalIndex
    from visloc.retrieval.rerank import RerankConf

    _check_protocol(protocol, kappas)
    rerank = rerank or RerankConf()
    gt = load_gnd(gnd_path)
    if protocol == "revisited" and not gt.is_revisited:
        raise DatasetError(f"{gt.path}: no 'easy' / 'hard' / 'junk' annotation; use the classic protocol")
    index = RetrievalIndex.load(index_path)
    names, vectors = _query_descriptors(Path(features), gt.qimlist)
    if vectors.shape[1] != index.dim:
        raise InputError(f"{features}: global descriptors of size {vectors.shape[1]}, but {index_path} "
                         f"holds size {index.dim}")
    found, _ = index.search(vectors, len(index))
    pairs = [(q, d) for q, ranked in zip(names, found, strict=True) for d in ranked]
    if rerank.enabled:
        pairs = rerank_pairs(pairs, features, rerank)
    try:
        ranks = ranks_from_pairs(pairs, gt.qimlist, gt.imlist)
    except ValueError as e:
        raise InputError(f"{index_path}: {e}") from e
    evaluate = retrieval.evaluate_revisited if protocol == "revisited" else retrieval.evaluate_classic
    results = evaluate(ranks, gt.gnd, kappas, len(gt.imlist))
    return RetrievalReport(protocol, gt.path, Path(index_path), len(gt.qimlist), len(gt.imlist), results,
                           rerank.top)


@dataclass(frozen=True)
class RecallReport:
    """Place recognition recall@N and the files it came from."""

    pred: Path
    radius: float
    num_database: int
    result: pr.RecallResult

    def text(self) -> str:
        """Recall@N in percent and the count of queries without positives."""
        res = self.result
        recalls = "  ".join(f"R@{n}: {100 * v:.2f}" for n, v in res.recall.items())
        return (f"{res.num_queries} queries ({len(res.without_positives)} without a positive within "
                f"{self.radius:g} m, left out), {self.num_database} database images\n{recalls}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (fractions, ``nan`` as ``None``)."""
        return {"pred": str(self.pred), "radius": self.radius, "num_database": self.num_database,
                **self.result.to_json()}

    def write(self, path: str | Path) -> Path:
        """Write the JSON report atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))


def _positions(utm_path: str | Path | None, names_path: str | Path | None, side: str) -> np.ndarray:
    """UTM ``[N, 2]`` of one side (``db`` or ``query``) from exactly one of its two files."""
    if names_path is not None and utm_path is None:
        return pr.read_vg_names(names_path)
    if utm_path is None or names_path is not None:
        raise InputError(f"give exactly one of the {side} UTM array or the {side} names file")
    utm = load_npy(utm_path, f"{side} UTM positions")
    try:
        return pr.check_utm(utm, f"{side} UTM positions")
    except ValueError as e:
        raise InputError(f"{utm_path}: {e}") from e


def evaluate_recall(pred_path: str | Path, *, db_utm_path: str | Path | None = None,
                    query_utm_path: str | Path | None = None, db_names_path: str | Path | None = None,
                    query_names_path: str | Path | None = None, radius: float = 25.0,
                    ns: Sequence[int] = pr.RECALL_NS) -> RecallReport:
    """Recall@N of predictions ``[nq, K]`` (``.npy``) with positives within ``radius`` metres.

    Each side's positions come from a ``.npy`` UTM array ``[N, 2]`` or from a text file of visual
    geo-localization names (``@east@north@...``), one per line, in the order of the indices.
    """
    if not 0 < radius < float("inf"):
        raise InputError(f"radius: expected metres > 0, got {radius}")
    db = _positions(db_utm_path, db_names_path, "db")
    queries = _positions(query_utm_path, query_names_path, "query")
    pred = load_npy(pred_path, "predictions")
    positives = pr.positives_within_radius(db, queries, radius)
    try:
        result = pr.recall_at_n(pred, positives, ns, len(db))
    except ValueError as e:
        raise InputError(f"{pred_path}: {e}") from e
    return RecallReport(Path(pred_path), float(radius), len(db), result)
