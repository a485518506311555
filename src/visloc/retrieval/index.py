"""A faiss index of L2-normalised global descriptors, searched by inner product (cosine similarity).

Kinds: ``flat`` (exact), ``ivfpq`` (inverted lists + product quantization, for millions of images)
and ``hnsw`` (a graph, fast and accurate but keeping the full vectors). On disk an index is three
files written atomically: ``<path>`` (``faiss.write_index``), ``<path>.names.txt`` (one image name a
line, in the index's order) and ``<path>.json`` (the resolved conf, dimension, size and a hash of
the names, so that a names file from another index is caught on load).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from visloc.conf import ConfError, conf_to_dict, load_conf
from visloc.errors import VislocError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.features_h5 import FeatureStoreError, read_global_descriptors

logger = logging.getLogger(__name__)

#: vectors handed to faiss per ``add`` call, bounding the temporary memory of a build
ADD_BATCH = 65536
#: faiss wants at least this many training vectors per k-means centroid
MIN_POINTS_PER_CENTROID = 39
#: how far from 1 a descriptor's L2 norm may be (float16 storage moves it by ~1e-3)
NORM_TOLERANCE = 1e-2
FORMAT = "visloc-retrieval-index"
FORMAT_VERSION = 1
_CLASSES = {"flat": faiss.IndexFlat, "ivfpq": faiss.IndexIVFPQ, "hnsw": faiss.IndexHNSW}


class RetrievalIndexError(VislocError, ValueError):
    """An index file that is missing, corrupt or inconsistent with its names or record."""


@dataclass(frozen=True)
class IndexConf:
    """How to build and search a retrieval index.

    Attributes:
        kind: ``flat`` (exact), ``ivfpq`` or ``hnsw``.
        nlist: IVF lists; reduced to ``train vectors // 39`` (with a warning) when there are too few.
        m: PQ sub-quantizers (bytes per vector at ``nbits=8``); must divide the dimension.
        nbits: bits per PQ sub-quantizer code.
        nprobe: IVF lists visited per query.
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search breadth (at least ``k`` is used).
        train_size: most vectors sampled (seeded) to train IVF-PQ.
        seed: seed of the training sample.
    """

    kind: Literal["flat", "ivfpq", "hnsw"] = "flat"
    nlist: int = 1024
    m: int = 16
    nbits: int = 8
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        for key, low in (("nlist", 1), ("m", 1), ("nbits", 1), ("nprobe", 1), ("hnsw_m", 2), ("ef_search", 1),
                         ("train_size", 1)):
            if getattr(self, key) < low:
                raise ConfError(f"IndexConf.{key} must be >= {low}, got {getattr(self, key)}")
        if self.nbits > 16:
            raise ConfError(f"IndexConf.nbits must be <= 16, got {self.nbits}")


def check_descriptors(vectors: object, what: str = "vectors", dim: int | None = None,
                      row_names: Sequence[str] | None = None) -> np.ndarray:
    """Validate global descriptors and return them as contiguous float32 ``[N, G]`` of unit norm.

    Args:
        vectors: array-like ``[N, G]``, each row L2-normalised (within ``NORM_TOLERANCE``).
        what: the argument's name, for the error message.
        dim: the expected ``G``, or None for any.
        row_names: names of the rows, to name the faulty one in the message.

    Raises:
        ValueError: naming ``what`` for a wrong shape, a non-finite value or a row that is not unit-norm.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what} must have shape [N, {dim or 'G'}] with N, G >= 1, got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    x = x.astype(np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what}: {_row(int(np.argmin(finite)), row_names)} has a non-finite value")
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1) > NORM_TOLERANCE
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{what} must be L2-normalised, {_row(i, row_names)} has norm {norms[i]:.4g}")
    x /= norms[:, None]  # exactly unit norm, so scores are cosine similarities
    return np.ascontiguousarray(x)


def _row(i: int, names: Sequence[str] | None) -> str:
    return f"row {i}" + (f" (image {names[i]!r})" if names is not None else "")


def _check_names(names: Sequence[str], n: int) -> list[str]:
    names = list(names)
    if len(names) != n:
        raise ValueError(f"names: expected {n} names (one per vector), got {len(names)}")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
            raise ValueError(f"names: {name!r} is not a non-empty one-line string")
        if name in seen:
            raise ValueError(f"names: {name!r} appears more than once")
        seen.add(name)
    return names


def _resolve_ivfpq(conf: IndexConf, n_train: int, dim: int) -> IndexConf:
    if dim % conf.m:
        raise ConfError(f"ivfpq: the dimension {dim} is not divisible by m={conf.m}")
    if n_train < 2**conf.nbits:
        raise ConfError(f"ivfpq: needs at least 2**nbits = {2**conf.nbits} training vectors, got {n_train}; "
                         "use kind=flat or a smaller nbits")
    if n_train < MIN_POINTS_PER_CENTROID * conf.nlist:
        nlist = max(1, n_train // MIN_POINTS_PER_CENTROID)
        logger.warning("ivfpq: %d training vectors are too few for nlist=%d (faiss wants %d per list); "
                       "using nlist=%d", n_train, conf.nlist, MIN_POINTS_PER_CENTROID, nlist)
        conf = dataclasses.replace(conf, nlist=nlist)
    return conf


def _new_index(conf: IndexConf, dim: int) -> faiss.Index:
    spec = {"flat": "Flat", "hnsw": f"HNSW{conf.hnsw_m}", "ivfpq": f"IVF{conf.nlist},PQ{conf.m}x{conf.nbits}"}
    index = faiss.index_factory(dim, spec[conf.kind], faiss.METRIC_INNER_PRODUCT)
    if conf.kind == "ivfpq":
        # only serves Hamming-distance search, and is slow to train (faiss's stubs lack the attribute)
        index.do_polysemous_training = False  # pyright: ignore[reportAttributeAccessIssue]
    return index


def _names_hash(names: Sequence[str]) -> str:
    return hashlib.sha256("".join(f"{n}\n" for n in names).encode()).hexdigest()


class RetrievalIndex:
    """Image names and their global descriptors ``[N, G]`` in a faiss index, searched by inner product."""

    def __init__(self, index: faiss.Index, names: Sequence[str], conf: IndexConf) -> None:
        """Wrap a built faiss ``index`` whose vector ``i`` is the image ``names[i]``; see ``build``/``load``."""
        if index.ntotal != len(names):
            raise ValueError(f"the index holds {index.ntotal} vectors but {len(names)} names were given")
        self.index = index
        self.names = list(names)
        self.conf = conf
        self._ids = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        """Descriptor size ``G``."""
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, names: Sequence[str], vectors: object, conf: IndexConf | None = None) -> RetrievalIndex:
        """Index ``vectors [N, G]`` (float, L2-normalised) under unique image ``names`` (N of them).

        IVF-PQ is trained on at most ``conf.train_size`` vectors sampled with ``conf.seed``; the
        index's ``conf`` records the values actually used (``nlist`` may be reduced).
        """
        conf = conf or IndexConf()
        x = check_descriptors(vectors)
        names = _check_names(names, len(x))
        start = time.perf_counter()
        if conf.kind == "ivfpq":
            n_train = min(conf.train_size, len(x))
            conf = _resolve_ivfpq(conf, n_train, x.shape[1])
            rng = np.random.default_rng(conf.seed)
            sample = np.sort(rng.choice(len(x), n_train, replace=False)) if n_train < len(x) else slice(None)
            index = _new_index(conf, x.shape[1])
            index.train(np.ascontiguousarray(x[sample]))
        else:
            index = _new_index(conf, x.shape[1])
        for i in range(0, len(x), ADD_BATCH):
            index.add(x[i:i + ADD_BATCH])
        logger.info("built a %s index of %d vectors [%d] in %.2f s", conf.kind, len(x), x.shape[1],
                    time.perf_counter() - start)
        return cls(index, names, conf)

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        if self.conf.kind == "ivfpq":
            ivf = faiss.SearchParametersIVF()  # faiss's keyword constructor sets the attributes, as here
            ivf.nprobe = min(self.conf.nprobe, self.conf.nlist)
            return ivf
        if self.conf.kind == "hnsw":  # faiss's stubs lack SearchParametersHNSW (faiss has it)
            return faiss.SearchParametersHNSW(efSearch=max(self.conf.ef_search, k))  # pyright: ignore[reportAttributeAccessIssue]
        return None

    def search(self, queries: object, k: int,
               exclude_names: Sequence[str] | None = None) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` database images most similar to each query, best first.

        Args:
            queries: ``[Q, G]`` L2-normalised descriptors.
            k: results per query (>= 1).
            exclude_names: ``Q`` names; query ``i`` never retrieves the image ``exclude_names[i]``
                (itself, when the queries are database images). The exclusion is by name, so an
                identical descriptor stored under another name is still retrieved.

        Returns:
            ``(names, scores)``: ``names[i]`` lists query ``i``'s results (fewer than ``k`` only when
            the index has fewer candidates), ``scores [Q, k]`` float32 their inner products, ``-inf``
            in the slots of missing results.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        q = check_descriptors(queries, "queries", self.dim)
        excluded = np.full(len(q), -2, np.int64)  # -2 matches no label (faiss pads with -1)
        if exclude_names is not None:
            if len(exclude_names) != len(q):
                raise ValueError(f"exclude_names: expected {len(q)} names (one per query), got {len(exclude_names)}")
            excluded = np.array([self._ids.get(n, -2) for n in exclude_names], np.int64)
        k_raw = min(k + int((excluded >= 0).any()), len(self))
        raw_scores, labels = self.index.search(q, k_raw, params=self._search_params(k_raw))
        keep = (labels >= 0) & (labels != excluded[:, None])
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, ranks unchanged
        labels, keep = np.take_along_axis(labels, order, 1), np.take_along_axis(keep, order, 1)
        scores = np.full((len(q), k), -np.inf, np.float32)
        scores[:, :labels.shape[1]] = np.where(keep, np.take_along_axis(raw_scores, order, 1), -np.inf)
        names = [[self.names[j] for j in row[ok]] for row, ok in zip(labels, keep, strict=True)]
        return names, scores

    def save(self, path: str | Path) -> Path:
        """Write ``path``, ``path.names.txt`` and ``path.json``, each atomically; return ``path``."""
        path = Path(path)
        atomic_write_text(_names_path(path), "".join(f"{n}\n" for n in self.names))
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        record = {"format": FORMAT, "version": FORMAT_VERSION, "dim": self.dim, "ntotal": len(self),
                  "names_sha256": _names_hash(self.names), "conf": conf_to_dict(self.conf)}
        atomic_write_text(_record_path(path), json.dumps(record, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Read an index written by ``save``; ``RetrievalIndexError`` names the faulty file in one line."""
        path = Path(path)
        if not path.is_file():
            raise RetrievalIndexError(f"{path}: retrieval index not found")
        record = _read_record(_record_path(path))
        names = _read_names(_names_path(path))
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise RetrievalIndexError(f"{path}: not a readable faiss index ({_faiss_reason(e)})") from None
        conf = record["conf"]
        if not isinstance(index, _CLASSES[conf.kind]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RetrievalIndexError(f"{path}: an {type(index).__name__}, not the inner-product "
                                      f"{conf.kind} index that {_record_path(path).name} records")
        if index.ntotal != len(names) or index.ntotal != record["ntotal"] or index.d != record["dim"]:
            raise RetrievalIndexError(f"{path}: {index.ntotal} vectors of dim {index.d}, but "
                                      f"{_names_path(path).name} has {len(names)} names and "
                                      f"{_record_path(path).name} records {record['ntotal']} of dim {record['dim']}")
        if _names_hash(names) != record["names_sha256"]:
            raise RetrievalIndexError(f"{_names_path(path)}: the names differ from those the index was saved with")
        return cls(index, names, conf)


def _faiss_reason(error: RuntimeError) -> str:
    """The message of a faiss exception without its C++ location: ``Error in <function> at <file>:<line>: ...``."""
    text = " ".join(str(error).split())
    found = re.search(r"\.(?:cpp|h):\d+: (?:Error: '.*?' failed: )?(.*)", text)
    return (found.group(1) if found else text)[:120] or type(error).__name__


def _names_path(path: Path) -> Path:
    return path.with_name(path.name + ".names.txt")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetrievalIndexError(f"{path}: names file of the index not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RetrievalIndexError(f"{path}: unreadable names file ({type(e).__name__})") from None
    names = text.split("\n")
    return names[:-1] if names and names[-1] == "" else names


def _read_record(path: Path) -> dict:
    """The ``.json`` record with ``conf`` loaded as an ``IndexConf``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrievalIndexError(f"{path}: record of the index not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RetrievalIndexError(f"{path}: unreadable index record ({type(e).__name__})") from None
    keys = {"format", "version", "dim", "ntotal", "names_sha256", "conf"}
    if not isinstance(record, dict) or record.get("format") != FORMAT or not keys <= set(record):
        raise RetrievalIndexError(f"{path}: not a visloc index record (expected keys {sorted(keys)})")
    if record["version"] != FORMAT_VERSION:
        raise RetrievalIndexError(f"{path}: index format version {record['version']}, expected {FORMAT_VERSION}")
    try:
        record["conf"] = load_conf(IndexConf, record["conf"], where=f"{path}: conf")
    except (ConfError, TypeError) as e:
        raise RetrievalIndexError(str(e).splitlines()[0]) from None
    return record


def global_descriptors(features: str | Path, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The images' ``global_descriptor`` from a feature file (hloc layout) as ``(names, [N, G] float32)``.

    ``names=None`` reads every image of the file. Missing descriptors raise ``FeatureStoreError``
    naming the file and the first image without one, as do descriptors that are not finite and unit-norm.
    """
    names, vectors = read_global_descriptors(features, None if names is None else list(names))
    try:
        return names, check_descriptors(vectors, f"{features}: global_descriptor", row_names=names)
    except ValueError as e:
        raise FeatureStoreError(str(e)) from None


def pairs_from_retrieval(index: RetrievalIndex, query_names: Sequence[str], query_vectors: object,
                         k: int) -> list[tuple[str, str]]:
    """``(query, db)`` pairs: each query's ``k`` best database images, ranked; a query never pairs with itself."""
    query_names = list(query_names)
    results, _ = index.search(query_vectors, k, exclude_names=query_names)
    return [(q, db) for q, found in zip(query_names, results, strict=True) for db in found]
