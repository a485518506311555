"""VLAD (Jégou et al. 2010) global descriptors from local ones, with a k-means vocabulary.

Training-free apart from the vocabulary, which faiss k-means learns from local descriptors of the
user's own images (``visloc vocab``). The aggregation follows Arandjelović & Zisserman, "All about
VLAD" (2013): hard assignment to the nearest centroid, sum of residuals per cluster,
intra-normalisation per cluster, optional signed square root, global L2 normalisation.

A vocabulary file (``vocab.pt``) is ``torch.save({"centroids": [K, D] float32 tensor, "conf": dict,
"source": {"extractor": name, "images": count}})``, read back with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from visloc.errors import VislocError
from visloc.io.atomic import atomic_path
from visloc.io.outputs import has_magic
from visloc.weights.load import WeightsError, safe_load

logger = logging.getLogger(__name__)

#: k-means iterations of ``kmeans`` (``learn_vocabulary``)
KMEANS_ITERS = 25


class VocabularyError(VislocError, ValueError):
    """A vocabulary file that is missing, corrupt or does not fit the extractor."""


@dataclass(frozen=True)
class Vocabulary:
    """Centroids ``[K, D]`` float32 and the record they were saved with."""

    centroids: np.ndarray
    conf: dict[str, Any]
    source: dict[str, Any]

    @property
    def num_clusters(self) -> int:
        """``K``."""
        return int(self.centroids.shape[0])


def _check_matrix(x: object, what: str, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim) or a.shape[1] < 1:
        raise ValueError(f"{what}: expected [N, {dim or 'D'}], got {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: expected floating point, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def kmeans(x: np.ndarray, num_clusters: int, seed: int = 0, niter: int = KMEANS_ITERS,
           max_points: int = 200_000) -> np.ndarray:
    """Seeded faiss k-means, the one k-means of visloc (VLAD vocabularies, NetVLAD initialisation).

    Args:
        x: ``[N, D]`` float points, ``N >= num_clusters``.
        num_clusters: ``K``.
        seed: seeds the subsample and faiss' initialisation.
        niter: k-means iterations.
        max_points: at most this many points (a seeded random subsample, kept in order) are clustered;
            faiss itself is told to use them all.

    Returns:
        ``[K, D]`` float32 centroids.
    """
    x = _check_matrix(x, "descriptors")
    if num_clusters < 1:
        raise VocabularyError(f"num_clusters must be >= 1, got {num_clusters}")
    if len(x) < num_clusters:
        raise VocabularyError(f"descriptors: {len(x)} descriptors are too few for {num_clusters} clusters")
    if len(x) > max_points:
        rng = np.random.default_rng(seed)
        x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
    km = faiss.Kmeans(x.shape[1], num_clusters, niter=niter, seed=seed, verbose=False,
                      max_points_per_centroid=max(256, -(-len(x) // num_clusters)))
    km.train(x)
    if km.centroids is None:  # faiss leaves None only when training did not run
        raise RuntimeError("faiss k-means returned no centroids")
    return np.ascontiguousarray(km.centroids.reshape(num_clusters, x.shape[1]), dtype=np.float32)


def learn_vocabulary(descriptors: np.ndarray, num_clusters: int = 64, seed: int = 0,
                     max_descriptors: int = 200_000) -> np.ndarray:
    """VLAD vocabulary: ``kmeans`` centroids ``[K, D]`` float32 of local descriptors ``[N, D]``."""
    return kmeans(descriptors, num_clusters, seed=seed, max_points=max_descriptors)


#: residual sums shorter than this are float32 noise (descriptors are unit vectors), zeroed before intra-norm
RESIDUAL_EPS = 1e-4


def vlad_torch(descriptors: torch.Tensor, centroids: torch.Tensor, power_norm: bool = False,
               intra_norm: bool = True) -> torch.Tensor:
    """Batched VLAD, the one implementation (``vlad`` adapts it to numpy arrays).

    Hard assignment to the nearest centroid (squared L2), sum of residuals per cluster, optional
    intra-normalisation, optional signed square root, global L2 normalisation. Computed in float32
    (float64 stays float64); an image without descriptors (``N = 0``) gives zeros.

    Args:
        descriptors: ``[B, N, D]`` local descriptors.
        centroids: ``[K, D]`` vocabulary.
        power_norm: signed square root after intra-normalisation.
        intra_norm: L2-normalise each cluster's residual sum.

    Returns:
        ``[B, K * D]``, L2-normalised, cluster-major (``out[:, k * D:(k + 1) * D]`` is cluster ``k``).
    """
    if centroids.ndim != 2 or centroids.shape[1] < 1:
        raise ValueError(f"centroids: expected [K, D], got {list(centroids.shape)}")
    k, d = centroids.shape
    if descriptors.ndim != 3 or descriptors.shape[-1] != d:
        raise ValueError(f"descriptors: expected [B, N, {d}], got {list(descriptors.shape)}")
    dtype = torch.promote_types(descriptors.dtype, torch.float32)
    x, c = descriptors.to(dtype), centroids.to(device=descriptors.device, dtype=dtype)
    b = x.shape[0]
    dist = (x * x).sum(-1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(-1)  # [B, N, K]
    assign = dist.argmin(-1)  # [B, N]
    v = torch.zeros(b, k, d, device=x.device, dtype=dtype)
    v.scatter_add_(1, assign[..., None].expand(-1, -1, d), x - c[assign])
    if intra_norm:
        # a residual sum below float32 rounding of unit descriptors (a point that is its own centroid)
        # is noise: normalising it would give a random unit vector, so it counts as empty
        norms = v.norm(dim=-1, keepdim=True)
        v = torch.where(norms > RESIDUAL_EPS, v / norms.clamp_min(RESIDUAL_EPS), torch.zeros_like(v))
    if power_norm:
        v = v.sign() * v.abs().sqrt()
    v = v.reshape(b, k * d)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def vlad(descriptors: np.ndarray, centroids: np.ndarray, power_norm: bool = False,
         intra_norm: bool = True) -> np.ndarray:
    """VLAD of one image's numpy descriptors: ``vlad_torch`` on ``[1, N, D]`` in float64.

    Args:
        descriptors: ``[N, D]`` local descriptors.
        centroids: ``[K, D]`` vocabulary.
        power_norm: apply the signed square root after intra-normalisation.
        intra_norm: L2-normalise each cluster's residual sum.

    Returns:
        ``[K * D]`` float32, L2-normalised, cluster-major; all zeros when there are no descriptors.
    """
    c = _check_matrix(centroids, "centroids")
    x = _check_matrix(descriptors, "descriptors", c.shape[1])
    out = vlad_torch(torch.from_numpy(x).double()[None], torch.from_numpy(c).double(), power_norm, intra_norm)
    return out[0].numpy().astype(np.float32)


def save_vocabulary(path: str | Path, centroids: np.ndarray, conf: dict[str, Any],
                    source: dict[str, Any]) -> Path:
    """Write ``centroids [K, D]`` with its conf and source record to ``path`` atomically."""
    c = _check_matrix(centroids, "centroids")
    record = {"centroids": torch.from_numpy(c.copy()), "conf": dict(conf), "source": dict(source)}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return Path(path)


def is_vocabulary(path: str | Path) -> bool:
    """Whether ``path`` is a vocabulary file (a torch zip archive that ``load_vocabulary`` reads)."""
    if not has_magic(Path(path), b"PK\x03\x04"):
        return False
    try:
        load_vocabulary(path)
    except VocabularyError:
        return False
    return True


def load_vocabulary(path: str | Path, num_clusters: int | None = None, dim: int | None = None) -> Vocabulary:
    """Read a vocabulary file; a missing, corrupt or mismatching file raises ``VocabularyError`` naming it.

    Args:
        path: file written by ``save_vocabulary`` (``visloc vocab``).
        num_clusters: the ``K`` the caller expects, or None for any.
        dim: the ``D`` the caller expects, or None for any.
    """
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f"{path}: vocabulary file not found (make one with 'visloc vocab IMAGES --out {path}')")
    try:
        data = safe_load(path, "vocabulary")
    except WeightsError as e:  # one line naming the file; a vocabulary's callers catch VocabularyError
        raise VocabularyError(str(e)) from None
    if not isinstance(data, dict) or not isinstance(data.get("centroids"), torch.Tensor):
        raise VocabularyError(f"{path}: not a visloc vocabulary (expected a dict with a 'centroids' tensor)")
    c = data["centroids"]
    if c.ndim != 2 or not c.is_floating_point() or not torch.isfinite(c).all():
        raise VocabularyError(f"{path}: centroids must be a finite float [K, D] tensor, got {list(c.shape)}")
    if num_clusters is not None and c.shape[0] != num_clusters:
        raise VocabularyError(f"{path}: holds {c.shape[0]} clusters, but num_clusters={num_clusters}")
    if dim is not None and c.shape[1] != dim:
        raise VocabularyError(f"{path}: centroids of dimension {c.shape[1]}, but the descriptors have {dim}")
    return Vocabulary(c.numpy().astype(np.float32), dict(data.get("conf") or {}), dict(data.get("source") or {}))
