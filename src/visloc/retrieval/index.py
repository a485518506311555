"""A faiss index of L2-normalised global descriptors, searched by inner product (cosine similarity).

Kinds: ``flat`` (exact), ``ivfpq`` (inverted lists + product quantization, for millions of images;
by default with a refine stage that re-scores its candidates exactly from the stored vectors,
``retrieval.refine``) and ``hnsw`` (a graph, fast and accurate but keeping the full vectors in RAM).
The parameters that depend on the database size default to values scaled with it
(``retrieval.index_conf``). ``RetrievalIndex.build`` indexes vectors in memory;
``RetrievalIndex.build_on_disk`` reads them in chunks (from a feature file larger than RAM) and
writes the index's files as it goes (``retrieval.index_files``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from visloc.io.atomic import atomic_path
from visloc.io.features_h5 import FeatureStoreError, read_global_descriptors
from visloc.retrieval import index_files as files
from visloc.retrieval.faiss_files import check_index_file
from visloc.retrieval.index_conf import IndexConf, resolve_conf
from visloc.retrieval.index_files import RetrievalIndexError
from visloc.retrieval.refine import refine_dtype, rescore

__all__ = ["IndexConf", "RetrievalIndex", "RetrievalIndexError", "RowReader", "check_descriptors",
           "feature_file_reader", "global_descriptors", "pairs_from_retrieval"]

logger = logging.getLogger(__name__)

#: vectors read and handed to faiss per ``add`` call, bounding the temporary memory of a build
ADD_BATCH = 65536
#: how far from 1 a descriptor's L2 norm may be (float16 storage moves it by ~1e-3)
NORM_TOLERANCE = 1e-2
_CLASSES = {"flat": faiss.IndexFlat, "ivfpq": faiss.IndexIVFPQ, "hnsw": faiss.IndexHNSW}

#: reads the database rows ``i`` (sorted int64 ``[n]``) as float32 unit vectors ``[n, G]``
RowReader = Callable[[np.ndarray], np.ndarray]


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


def _new_index(conf: IndexConf, dim: int) -> faiss.Index:
    spec = {"flat": "Flat", "hnsw": f"HNSW{conf.hnsw_m}", "ivfpq": f"IVF{conf.nlist},PQ{conf.m}x{conf.nbits}"}
    index = faiss.index_factory(dim, spec[conf.kind], faiss.METRIC_INNER_PRODUCT)
    if conf.kind == "ivfpq":
        # only serves Hamming-distance search, and is slow to train (faiss's stubs lack the attribute)
        index.do_polysemous_training = False  # pyright: ignore[reportAttributeAccessIssue]
    if conf.kind == "hnsw" and conf.ef_construction:
        cast(faiss.IndexHNSW, index).hnsw.efConstruction = conf.ef_construction
    return index


def _trained_index(conf: IndexConf, n: int, dim: int, read_rows: RowReader) -> faiss.Index:
    """A new index for ``conf``; IVF-PQ trained on ``conf.train_size`` rows sampled with ``conf.seed``."""
    index = _new_index(conf, dim)
    if conf.kind == "ivfpq":
        n_train = min(n, conf.train_size or n)
        rows = np.arange(n) if n_train == n else np.sort(np.random.default_rng(conf.seed).choice(n, n_train,
                                                                                               replace=False))
        index.train(np.ascontiguousarray(read_rows(rows), dtype=np.float32))
    return index


def _add_chunks(index: faiss.Index, n: int, read_rows: RowReader, stored: np.ndarray | None) -> None:
    """Add the ``n`` rows in chunks of ``ADD_BATCH``, copying them into ``stored`` (the refine vectors) if any."""
    for start in range(0, n, ADD_BATCH):
        chunk = np.ascontiguousarray(read_rows(np.arange(start, min(n, start + ADD_BATCH))), dtype=np.float32)
        index.add(chunk)
        if stored is not None:
            stored[start:start + len(chunk)] = chunk


class RetrievalIndex:
    """Image names and their global descriptors ``[N, G]`` in a faiss index, searched by inner product.

    Attributes:
        index: the faiss index (for ``ivfpq`` the plain IVF-PQ, without its refine stage).
        names: ``N`` image names, ``names[i]`` the image of the index's vector ``i``.
        conf: the resolved conf (no ``None`` left among the fields of its kind).
        vectors: the refine vectors ``[N, G]`` (float16/32; in RAM after ``build``, memory-mapped after
            ``load`` and ``build_on_disk``), or None without a refine stage.
    """

    def __init__(self, index: faiss.Index, names: Sequence[str], conf: IndexConf,
                 vectors: np.ndarray | None = None) -> None:
        """Wrap a built faiss ``index`` whose vector ``i`` is the image ``names[i]``; see ``build``/``load``."""
        if index.ntotal != len(names):
            raise ValueError(f"the index holds {index.ntotal} vectors but {len(names)} names were given")
        if conf.refined and (vectors is None or vectors.shape != (index.ntotal, index.d)):
            raise ValueError(f"conf.refine={conf.refine} needs vectors [{index.ntotal}, {index.d}], got "
                             f"{None if vectors is None else list(vectors.shape)}")
        self.index = index
        self.names = list(names)
        self.conf = conf
        self.vectors = vectors if conf.refined else None
        self._ids = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        """Descriptor size ``G``."""
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, names: Sequence[str], vectors: object, conf: IndexConf | None = None) -> RetrievalIndex:
        """Index ``vectors [N, G]`` (float, L2-normalised) under unique image ``names`` (N of them), in memory.

        The index's ``conf`` records the values actually used (``resolve_conf``: the defaults scaled with
        ``N``, ``nlist`` reduced when the training sample is small). ``save`` writes it.
        """
        x = check_descriptors(vectors)
        names = _check_names(names, len(x))
        conf = resolve_conf(conf or IndexConf(), len(x), x.shape[1])
        start = time.perf_counter()
        index = _trained_index(conf, len(x), x.shape[1], x.__getitem__)
        stored = np.empty(x.shape, refine_dtype(conf.refine or "")) if conf.refined else None
        _add_chunks(index, len(x), x.__getitem__, stored)
        logger.info("built a %s index of %d vectors [%d] in %.2f s", conf.kind, len(x), x.shape[1],
                    time.perf_counter() - start)
        return cls(index, names, conf, stored)

    @classmethod
    def build_on_disk(cls, path: str | Path, names: Sequence[str], read_rows: RowReader,
                      conf: IndexConf | None = None) -> RetrievalIndex:
        """Index the ``N = len(names)`` vectors that ``read_rows`` reads, in chunks, and save it to ``path``.

        Memory: the faiss index (for IVF-PQ its codes and ids, ``m + 8`` bytes a vector), the training
        sample (``train_size x G`` float32) and one chunk of ``ADD_BATCH`` rows; the refine vectors go to
        ``path.vectors.npy`` as they are added. ``read_rows`` must return L2-normalised rows (checked).
        Returns the index as ``load(path)`` would.
        """
        path = Path(path)
        names = _check_names(names, len(names))
        if not names:
            raise ValueError("names: an index needs at least one vector")
        dim = check_descriptors(read_rows(np.zeros(1, np.int64)), "read_rows([0])").shape[1]

        def checked(rows: np.ndarray) -> np.ndarray:
            return check_descriptors(read_rows(rows), "read_rows", dim)

        conf = resolve_conf(conf or IndexConf(), len(names), dim)
        start = time.perf_counter()
        index = _trained_index(conf, len(names), dim, checked)
        writer = files.vectors_writer(path, len(names), dim, refine_dtype(conf.refine or "")) if conf.refined \
            else contextlib.nullcontext(None)
        with writer as stored:
            _add_chunks(index, len(names), checked, stored)
        vectors = np.load(files.vectors_path(path), mmap_mode="r") if conf.refined else None
        built = cls(index, names, conf, vectors)
        built._write(path, with_vectors=False)
        logger.info("built a %s index of %d vectors [%d] in %.2f s -> %s", conf.kind, len(names), dim,
                    time.perf_counter() - start, path)
        return built

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        if self.conf.kind == "ivfpq":
            ivf = faiss.SearchParametersIVF()  # faiss's keyword constructor sets the attributes, as here
            ivf.nprobe = min(self.conf.nprobe or 1, self.conf.nlist or 1)
            return ivf
        if self.conf.kind == "hnsw":  # faiss's stubs lack SearchParametersHNSW (faiss has it)
            return faiss.SearchParametersHNSW(efSearch=max(self.conf.ef_search or k, k))  # pyright: ignore[reportAttributeAccessIssue]
        return None

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The faiss ``(scores, labels) [Q, k]``; with a refine stage, the best of ``k_factor * k`` re-scored."""
        if self.vectors is None:
            return self.index.search(q, k, params=self._search_params(k))
        n_candidates = min(len(self), (self.conf.k_factor or 1) * k)
        _, candidates = self.index.search(q, n_candidates, params=self._search_params(n_candidates))
        return rescore(self.vectors, q, candidates, k)

    def search(self, queries: object, k: int,
               exclude_names: Sequence[str] | None = None) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` database images most similar to each query, best first.

        Args:
            queries: ``[Q, G]`` L2-normalised descriptors (searched as one batch, faiss's threads).
            k: results per query (>= 1).
            exclude_names: ``Q`` names; query ``i`` never retrieves the image ``exclude_names[i]``
                (itself, when the queries are database images). The exclusion is by name, so an
                identical descriptor stored under another name is still retrieved.

        Returns:
            ``(names, scores)``: ``names[i]`` lists query ``i``'s results (fewer than ``k`` only when
            the index has fewer candidates), ``scores [Q, k]`` float32 their inner products, ``-inf``
            in the slots of missing results. With a refine stage the scores are exact (those of the
            stored vectors), otherwise IVF-PQ's approximations.
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
        raw_scores, labels = self._raw_search(q, k_raw)
        keep = (labels >= 0) & (labels != excluded[:, None])
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, ranks unchanged
        labels, keep = np.take_along_axis(labels, order, 1), np.take_along_axis(keep, order, 1)
        scores = np.full((len(q), k), -np.inf, np.float32)
        scores[:, :labels.shape[1]] = np.where(keep, np.take_along_axis(raw_scores, order, 1), -np.inf)
        names = [[self.names[j] for j in row[ok]] for row, ok in zip(labels, keep, strict=True)]
        return names, scores

    def save(self, path: str | Path) -> Path:
        """Write ``path`` and its ``.names.txt``, ``.vectors.npy`` (with a refine stage) and ``.json``; return ``path``.

        Each file is written atomically, the record last; a ``.vectors.npy`` left by an earlier refined
        index at ``path`` is removed when this one has no refine stage.
        """
        path = Path(path)
        self._write(path, with_vectors=True)
        return path

    def _write(self, path: Path, with_vectors: bool) -> None:
        if with_vectors and self.vectors is not None:
            files.write_vectors(path, self.vectors, ADD_BATCH)
        files.write_names(path, self.names)
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        files.write_record(path, self.conf, self.dim, self.names, self.vectors)
        if self.vectors is None:
            files.vectors_path(path).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Read an index written by ``save``; ``RetrievalIndexError`` names the faulty file in one line.

        The refine vectors are memory-mapped, not read: RAM holds what searches touch.
        """
        path = Path(path)
        if not path.is_file():
            raise RetrievalIndexError(f"{path}: retrieval index not found")
        record = files.read_record(path)
        names = files.read_names(path)
        check_index_file(path)  # faiss allocates what a size field says before reading: checked first
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise RetrievalIndexError(f"{path}: not a readable faiss index ({files.faiss_reason(e)})") from None
        conf: IndexConf = record["conf"]
        record_name, names_name = files.record_path(path).name, files.names_path(path).name
        if not isinstance(index, _CLASSES[conf.kind]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RetrievalIndexError(f"{path}: an {type(index).__name__}, not the inner-product "
                                      f"{conf.kind} index that {record_name} records")
        if index.ntotal != len(names) or index.ntotal != record["ntotal"] or index.d != record["dim"]:
            raise RetrievalIndexError(f"{path}: {index.ntotal} vectors of dim {index.d}, but {names_name} has "
                                      f"{len(names)} names and {record_name} records {record['ntotal']} of dim "
                                      f"{record['dim']}")
        if files.names_hash(names) != record["names_sha256"]:
            raise RetrievalIndexError(f"{files.names_path(path)}: the names differ from those the index was saved with")
        vectors = files.open_vectors(path, record) if conf.refined else None
        return cls(index, names, conf, vectors)


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


def feature_file_reader(features: str | Path, names: Sequence[str]) -> RowReader:
    """A ``RowReader`` of the images ``names`` of a feature file: each call reads only the rows it is asked for.

    For ``RetrievalIndex.build_on_disk`` from a feature file larger than RAM; errors as ``global_descriptors``.
    """
    names = list(names)

    def read(rows: np.ndarray) -> np.ndarray:
        return global_descriptors(features, [names[int(i)] for i in rows])[1]

    return read


def pairs_from_retrieval(index: RetrievalIndex, query_names: Sequence[str], query_vectors: object,
                         k: int) -> list[tuple[str, str]]:
    """``(query, db)`` pairs: each query's ``k`` best database images, ranked; a query never pairs with itself."""
    query_names = list(query_names)
    k = min(k, len(index)) if isinstance(k, int) and k >= 1 else k  # search pads [Q, k] scores: keep them small
    results, _ = index.search(query_vectors, k, exclude_names=query_names)
    return [(q, db) for q, found in zip(query_names, results, strict=True) for db in found]
