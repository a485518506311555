"""Index the global descriptors of a feature file, and retrieve pairs for the images of another.

``build_index(features.h5, db.index)`` writes a faiss index (``retrieval.index``);
``retrieve_pairs(db.index, queries.h5, pairs.txt, k)`` writes each query's ``k`` most similar
database images as ``query db`` lines, best first (hloc's pairs-from-retrieval), never a query with itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visloc.conf import apply_overrides
from visloc.io.pairs import write_pairs
from visloc.retrieval.index import IndexConf, RetrievalIndex, global_descriptors, pairs_from_retrieval

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

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        return [f"search: {self.num_queries} queries, {self.num_pairs} pairs in {self.seconds:.2f} s -> {self.out}"]


def build_index(features: str | Path, out: str | Path,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> IndexSummary:
    """Index every image's ``global_descriptor`` of ``features`` into ``out`` (+ ``.names.txt``, ``.json``).

    Args:
        features: feature file (hloc layout) whose images all have a global descriptor.
        out: index path; rebuilt when it exists.
        overrides: ``IndexConf`` overrides (``kind=ivfpq``, ``nlist=256``...).
    """
    conf = apply_overrides(IndexConf(), overrides)
    names, vectors = global_descriptors(features)
    start = time.perf_counter()
    index = RetrievalIndex.build(names, vectors, conf)
    seconds = time.perf_counter() - start
    index.save(out)
    return IndexSummary(Path(out), len(index), index.dim, index.conf, seconds)


def retrieve_pairs(index: str | Path, features: str | Path, out: str | Path, k: int = 50) -> RetrieveSummary:
    """Write the ``k`` best database images of each query image of ``features`` to the pairs file ``out``.

    Args:
        index: index written by ``build_index``.
        features: query feature file; every image needs a global descriptor of the index's size.
        out: pairs file, ``query db`` per line, each query's results best first.
        k: database images per query; a query that is itself in the database is not paired with itself.
    """
    db = RetrievalIndex.load(index)
    names, vectors = global_descriptors(features)
    if vectors.shape[1] != db.dim:
        raise ValueError(f"{features}: global descriptors of size {vectors.shape[1]}, but {index} "
                         f"holds size {db.dim}")
    start = time.perf_counter()
    pairs = pairs_from_retrieval(db, names, vectors, k)
    seconds = time.perf_counter() - start
    write_pairs(out, pairs)
    logger.info("retrieved %d pairs for %d queries in %.2f s", len(pairs), len(names), seconds)
    return RetrieveSummary(Path(out), len(names), len(pairs), seconds)
