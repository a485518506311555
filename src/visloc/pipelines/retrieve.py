"""Index the global descriptors of a feature file, and retrieve pairs for the images of another.

``build_index(features.h5, db.index)`` writes a faiss index (``retrieval.index``);
``retrieve_pairs(db.index, queries.h5, pairs.txt, k=k)`` writes each query's ``k`` most similar
database images as ``query db`` lines, best first (hloc's pairs-from-retrieval), never a query with itself;
with ``rerank=RerankConf(top=K, db_features=...)`` each query's first ``K`` results are re-ordered by
geometric verification (``retrieval.rerank``) on the local features of the query and database feature files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visloc.conf import apply_overrides
from visloc.errors import InputError
from visloc.io import features_h5
from visloc.io.locks import output_lock
from visloc.io.outputs import check_text_output
from visloc.io.pairs import write_pairs
from visloc.pipelines.extract import ATTR as EXTRACTOR_ATTR
from visloc.retrieval.faiss_files import check_index_output
from visloc.retrieval.index import (
    IndexConf,
    RetrievalIndex,
    feature_file_reader,
    global_descriptors,
    pairs_from_retrieval,
)
from visloc.retrieval.rerank import RerankConf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSummary:
    """What ``build_index`` wrote."""

    out: Path
    num_images: int
    dim: int
    conf: IndexConf
    seconds: float

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        return [f"index: {self.num_images} images, dim {self.dim}, {self.conf.kind}, built in {self.seconds:.2f} s "
                f"-> {self.out}"]


@dataclass(frozen=True)
class RetrieveSummary:
    """What ``retrieve_pairs`` wrote."""

    out: Path
    num_queries: int
    num_pairs: int
    seconds: float
    rerank: int = 0
    rerank_model: str = ""
    rerank_seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        out = [f"search: {self.num_queries} queries, {self.num_pairs} pairs in {self.seconds:.2f} s -> {self.out}"]
        if self.rerank:
            out.append(f"  re-ranked the top {self.rerank} of each query by {self.rerank_model} inliers "
                       f"in {self.rerank_seconds:.2f} s")
        return out


def build_index(features: str | Path, out: str | Path, *,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> IndexSummary:
    """Index every image's ``global_descriptor`` of ``features`` into ``out`` (+ ``.names.txt``, ``.json``).

    Args:
        features: feature file (hloc layout) whose images all have a global descriptor.
        out: index path; rebuilt when it exists.
        overrides: ``IndexConf`` overrides (``kind=ivfpq``, ``nprobe=32``...).

    The descriptors are read in chunks as they are added (``RetrievalIndex.build_on_disk``), so the
    feature file may be larger than RAM; with ``kind=ivfpq`` RAM holds the PQ codes and the training sample.

    Raises:
        OutputError: ``out`` (or its names, record or vectors file) exists as another kind of file.
        OutputLockedError: another job is writing ``out``.
    """
    conf = apply_overrides(IndexConf(), overrides)
    check_index_output(out)
    if not Path(features).is_file():
        raise features_h5.FeatureStoreError(f"{features}: feature file not found")
    with output_lock(out):
        names = features_h5.list_feature_names(features)
        if not names:
            raise features_h5.FeatureStoreError(f"{features}: no images to read global descriptors from")
        start = time.perf_counter()
        index = RetrievalIndex.build_on_disk(out, names, feature_file_reader(features, names), conf)
        seconds = time.perf_counter() - start
    return IndexSummary(Path(out), len(index), index.dim, index.conf, seconds)


def retrieve_pairs(index: str | Path, features: str | Path, out: str | Path, *, k: int = 50,
                   rerank: RerankConf | None = None) -> RetrieveSummary:
    """Write the ``k`` best database images of each query image of ``features`` to the pairs file ``out``.

    Args:
        index: index written by ``build_index``.
        features: query feature file; every image needs a global descriptor of the index's size.
        out: pairs file, ``query db`` per line, each query's results best first.
        k: database images per query (>= 1, clamped to the index size); a query that is itself in the
            database is not paired with itself.
        rerank: re-ranking of each query's first results by inliers; None or ``top=0``: none.

    Raises:
        InputError: ``k`` < 1, or the descriptors of ``features`` do not fit the index.
        OutputLockedError: another job is writing ``out``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"-k: expected an integer >= 1, got {k!r}")
    check_text_output(out, "pairs")
    with output_lock(out):
        return _retrieve(index, features, Path(out), k, rerank or RerankConf())


def _retrieve(index: str | Path, features: str | Path, out: Path, k: int, rerank: RerankConf) -> RetrieveSummary:
    db = RetrievalIndex.load(index)
    k = min(k, len(db))  # more results than database images add none, only memory
    names, vectors = global_descriptors(features)
    if vectors.shape[1] != db.dim:
        raise InputError(f"{features}: global descriptors of size {vectors.shape[1]}, but {index} "
                         f"holds size {db.dim}")
    start = time.perf_counter()
    pairs = pairs_from_retrieval(db, names, vectors, k)
    seconds = time.perf_counter() - start
    rerank_seconds = 0.0
    if rerank.enabled:
        start = time.perf_counter()
        pairs = rerank_pairs(pairs, features, rerank)
        rerank_seconds = time.perf_counter() - start
    write_pairs(out, pairs)
    logger.info("retrieved %d pairs for %d queries in %.2f s", len(pairs), len(names), seconds)
    return RetrieveSummary(out, len(names), len(pairs), seconds, rerank.top, rerank.model, rerank_seconds)


def rerank_pairs(pairs: Sequence[tuple[str, str]], features: str | Path,
                 conf: RerankConf) -> list[tuple[str, str]]:
    """Re-rank the first ``conf.top`` database images of each query of ``pairs`` (ranked, grouped by query).

    Local features come from ``features`` (queries) and ``conf.db_features`` (database images).
    """
    if not conf.enabled or conf.db_features is None:
        raise ValueError(f"rerank_pairs: needs a conf with top >= 1 and db_features, got {conf}")
    from visloc.matching import MATCHERS
    from visloc.matching.select import check_feature_matcher, family_of_record, matcher_conf
    from visloc.retrieval.rerank import rerank

    check_feature_matcher(conf.matcher, "re-ranking")
    family = family_of_record(features_h5.read_attrs(conf.db_features).get(EXTRACTOR_ATTR))
    net = MATCHERS.build_conf(conf.matcher, matcher_conf(conf.matcher, conf.matcher_overrides, family))
    threshold = conf.threshold
    if threshold is None:
        from visloc.geometry import ESTIMATORS

        threshold = ESTIMATORS.conf(conf.model).threshold
    ranked: dict[str, list[str]] = {}
    for q, d in pairs:
        ranked.setdefault(q, []).append(d)
    out: list[tuple[str, str]] = []
    for q, found in ranked.items():
        head = found[:conf.top]
        res = rerank(features_h5.load_features(features, q),
                     [features_h5.load_features(conf.db_features, d) for d in head], head,
                     model=conf.model, threshold=threshold, matcher=net, min_inliers=conf.min_inliers,
                     rule=conf.rule)
        out += [(q, d) for d in res.names(head) + found[conf.top:]]
        logger.debug("rerank %s: inliers %s", q, dict(zip(head, res.inliers.tolist(), strict=True)))
    return out
