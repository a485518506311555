"""The conf of a retrieval index, and the defaults that scale with the database size ``N``.

A field left at ``None`` is resolved at build time from ``N`` and the dimension ``G`` by
``resolve_conf``; the index records the resolved values, so a saved index searches the same way
after loading. The rules were measured on 100k and 1M clustered vectors (README, "Retrieval index").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal

from visloc.conf import ConfError

logger = logging.getLogger(__name__)

#: faiss wants at least this many training vectors per k-means centroid
MIN_POINTS_PER_CENTROID = 39
#: training vectors per IVF list drawn by default (faiss samples at most 256 per centroid)
TRAIN_POINTS_PER_LIST = 64
#: fewest training vectors drawn by default (PQ's 256-centroid codebooks want thousands)
MIN_TRAIN_SIZE = 65536
#: most IVF-PQ sub-quantizers chosen by default (bytes per vector at 8 bits)
MAX_AUTO_M = 64


@dataclass(frozen=True)
class IndexConf:
    """How to build and search a retrieval index; ``None`` means "scaled with ``N``" (``resolve_conf``).

    Attributes:
        kind: ``flat`` (exact), ``ivfpq`` or ``hnsw``.
        nlist: IVF lists; auto ``4 sqrt(N)`` rounded to a power of two. Reduced to ``train vectors // 39``
            when there are too few (with a warning when it was set).
        m: PQ sub-quantizers (bytes per vector at ``nbits=8``); must divide ``G``. Auto: the largest
            divisor of ``G`` that is at most ``min(64, G / 4)``.
        nbits: bits per PQ sub-quantizer code.
        nprobe: IVF lists visited per query; auto ``max(16, nlist / 256)``.
        refine: exact re-scoring of IVF-PQ's candidates from the stored vectors (``fp16`` or ``fp32``,
            a memory-mapped file beside the index; ``retrieval.refine``), or ``none``. Auto: ``fp16`` for
            ``ivfpq``, ``none`` otherwise (only ``ivfpq`` stores approximate vectors).
        k_factor: with a refine stage, a search for ``k`` results re-scores IVF-PQ's best ``k_factor * k``
            (faiss's ``IndexRefine.k_factor``); auto ``10 sqrt(N / 1M)`` within [4, 64].
        hnsw_m: HNSW neighbours per node.
        ef_construction: HNSW build breadth (faiss's ``efConstruction``, 40 by default there); auto
            ``40 sqrt(N / 100k)`` rounded to a power of two within [40, 512]. At 1M the graph built
            with 40 caps recall@10 near 0.93 whatever ``ef_search``; with 128 it reaches 0.998.
        ef_search: HNSW search breadth (at least ``k`` is used); auto ``128 (N / 100k)^(1/4)`` rounded
            to a power of two within [32, 1024].
        train_size: most vectors sampled (seeded) to train IVF-PQ; auto ``max(65536, 64 nlist)``.
        seed: seed of the training sample.
    """

    kind: Literal["flat", "ivfpq", "hnsw"] = "flat"
    nlist: int | None = None
    m: int | None = None
    nbits: int = 8
    nprobe: int | None = None
    refine: Literal["none", "fp16", "fp32"] | None = None
    k_factor: int | None = None
    hnsw_m: int = 32
    ef_construction: int | None = None
    ef_search: int | None = None
    train_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for key, low in (("nlist", 1), ("m", 1), ("nbits", 1), ("nprobe", 1), ("k_factor", 1), ("hnsw_m", 2),
                         ("ef_construction", 1), ("ef_search", 1), ("train_size", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfError(f"IndexConf.{key} must be >= {low}, got {value}")
        if self.nbits > 16:
            raise ConfError(f"IndexConf.nbits must be <= 16, got {self.nbits}")
        if self.refine not in (None, "none") and self.kind != "ivfpq":
            raise ConfError(f"IndexConf.refine={self.refine} applies to kind=ivfpq only (got kind={self.kind})")

    @property
    def refined(self) -> bool:
        """Whether searches re-score candidates from stored vectors."""
        return self.refine in ("fp16", "fp32")


def _pow2(x: float) -> int:
    """The power of two nearest to ``x`` (in log scale), at least 1."""
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def auto_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ``4 sqrt(n)`` rounded to a power of two (faiss: 4-16 sqrt(n))."""
    return _pow2(4 * math.sqrt(n))


def auto_m(dim: int) -> int:
    """PQ sub-quantizers for dimension ``dim``: the largest divisor of ``dim`` up to ``min(64, dim / 4)``."""
    top = max(1, min(MAX_AUTO_M, dim // 4))
    return next(m for m in range(top, 0, -1) if dim % m == 0)


def auto_nprobe(nlist: int) -> int:
    """IVF lists visited: ``max(16, nlist / 256)``, at most ``nlist``."""
    return min(nlist, max(16, nlist // 256))


def auto_k_factor(n: int) -> int:
    """Candidates re-scored per result: ``10 sqrt(n / 1M)`` within [4, 64].

    The candidates needed grow with ``n``: they are the vectors whose PQ score lies within PQ's error
    of the ``k``-th exact score, a band that holds more vectors in a denser database.
    """
    return min(64, max(4, round(10 * math.sqrt(n / 1_000_000))))


def auto_ef_search(n: int) -> int:
    """HNSW search breadth: ``128 (n / 100k)^(1/4)`` rounded to a power of two within [32, 1024]."""
    return min(1024, max(32, _pow2(128 * (n / 100_000) ** 0.25)))


def auto_ef_construction(n: int) -> int:
    """HNSW build breadth: ``40 sqrt(n / 100k)`` rounded to a power of two within [40, 512]."""
    return min(512, max(40, _pow2(40 * math.sqrt(n / 100_000))))


def auto_train_size(nlist: int) -> int:
    """Training vectors drawn for ``nlist`` lists: ``max(65536, 64 nlist)``."""
    return max(MIN_TRAIN_SIZE, TRAIN_POINTS_PER_LIST * nlist)


def resolve_conf(conf: IndexConf, n: int, dim: int) -> IndexConf:
    """``conf`` with the fields its kind uses filled for ``n`` vectors of dimension ``dim``.

    Raises:
        ConfError: ``m`` does not divide ``dim``, or IVF-PQ has fewer than ``2**nbits`` training vectors.
    """
    if conf.kind == "hnsw":
        return dataclasses.replace(conf, refine="none", ef_search=conf.ef_search or auto_ef_search(n),
                                   ef_construction=conf.ef_construction or auto_ef_construction(n))
    if conf.kind == "flat":
        return dataclasses.replace(conf, refine="none")
    m = conf.m or auto_m(dim)
    if dim % m:
        raise ConfError(f"ivfpq: the dimension {dim} is not divisible by m={m}")
    nlist = conf.nlist or auto_nlist(n)
    n_train = min(n, conf.train_size or auto_train_size(nlist))
    if n_train < 2**conf.nbits:
        raise ConfError(f"ivfpq: needs at least 2**nbits = {2**conf.nbits} training vectors, got {n_train}; "
                        "use kind=flat or a smaller nbits")
    if n_train < MIN_POINTS_PER_CENTROID * nlist:
        fewer = max(1, n_train // MIN_POINTS_PER_CENTROID)
        if conf.nlist is not None:
            logger.warning("ivfpq: %d training vectors are too few for nlist=%d (faiss wants %d per list); "
                           "using nlist=%d", n_train, nlist, MIN_POINTS_PER_CENTROID, fewer)
        nlist = fewer
    refine = conf.refine or "fp16"
    k_factor = conf.k_factor or auto_k_factor(n)
    return dataclasses.replace(conf, nlist=nlist, m=m, nprobe=conf.nprobe or auto_nprobe(nlist), refine=refine,
                               k_factor=k_factor, train_size=n_train)
