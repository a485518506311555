"""Exact re-scoring of IVF-PQ's candidates from the stored database vectors (the refine stage).

This is faiss's ``IndexRefine(ivfpq, IndexScalarQuantizer(fp16))`` with its ``k_factor``: a search
for ``k`` results asks IVF-PQ for ``k_factor * k`` candidates and re-ranks them by their exact inner
product. The difference is where the vectors live. faiss's refine index is part of the faiss file,
and ``IndexRefine.add`` holds it in RAM while building (2 G bytes a vector at fp16: 8 GB for GLDv2's
4.1M images at G = 1024), so a database larger than RAM cannot be built. Here the vectors are an
``.npy`` file beside the index, written in chunks as they are added and memory-mapped on load: RAM
holds the PQ codes and ids, the operating system pages in the rows that searches touch, and the file
is readable without visloc (``numpy.load(path, mmap_mode="r")``). The re-scored inner products are
those of the stored (fp16: rounded) vectors, within about 1e-3 of the float32 ones.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

#: numpy dtype of each ``IndexConf.refine`` storage
DTYPES = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}
#: float32 bytes of gathered candidate vectors per re-scoring step, bounding its temporary memory
RESCORE_BYTES = 1 << 25
#: rows hashed into a vectors file's fingerprint
FINGERPRINT_ROWS = 64


def refine_dtype(name: Literal["fp16", "fp32"] | str) -> np.dtype:
    """The numpy dtype stored for ``IndexConf.refine`` ``name`` (``fp16`` or ``fp32``)."""
    if name not in DTYPES:
        raise ValueError(f"refine storage must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def fingerprint(vectors: np.ndarray) -> str:
    """sha256 of the shape, dtype and ``FINGERPRINT_ROWS`` evenly spaced rows of ``vectors [N, G]``.

    Cheap to check on load (a few reads), and tells a vectors file written for another index apart.
    """
    n = len(vectors)
    rows = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).astype(np.int64)) if n else np.zeros(0, int)
    digest = hashlib.sha256(f"{vectors.shape} {vectors.dtype.str}".encode())
    digest.update(np.ascontiguousarray(vectors[rows]).tobytes())
    return digest.hexdigest()


def rescore(vectors: np.ndarray, queries: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidates by their exact inner product with the query.

    Args:
        vectors: database vectors ``[N, G]`` (float16 or float32; an in-memory array or a memory map).
        queries: ``[Q, G]`` float32.
        labels: ``[Q, R]`` int64 candidate rows of ``vectors``, ``-1`` for none (faiss's padding).
        k: results to keep (``min(k, R)`` are returned).

    Returns:
        ``(scores [Q, k'], labels [Q, k'])`` best first, ``k' = min(k, R)``; ``-inf`` and ``-1`` where a
        query had fewer candidates. Equal scores keep the candidates' order.
    """
    n_q, r = labels.shape
    dim = queries.shape[1]
    k = min(k, r)
    scores_out = np.full((n_q, k), -np.inf, np.float32)
    labels_out = np.full((n_q, k), -1, np.int64)
    step = max(1, RESCORE_BYTES // max(1, r * dim * 4))
    for start in range(0, n_q, step):
        lab = labels[start:start + step]
        gathered = np.asarray(vectors[np.maximum(lab, 0).ravel()], dtype=np.float32).reshape(len(lab), r, dim)
        scores = np.einsum("qrd,qd->qr", gathered, queries[start:start + step])
        scores[lab < 0] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores_out[start:start + step] = np.take_along_axis(scores, top, 1)
        labels_out[start:start + step] = np.where(np.isneginf(scores_out[start:start + step]), -1,
                                                  np.take_along_axis(lab, top, 1))
    return scores_out, labels_out
