"""DELF's PCA (and whitening) of its local descriptors, learned from database descriptors.

DELF describes a keypoint by ``block3`` (1024-d for a ResNet-50), L2-normalised, projected on the
first ``dim`` principal axes (40 in ``delf_config_example.pbtxt``), optionally divided by the square
root of their variances (whitening), then L2-normalised again: tensorflow/models
``delf/python/feature_extractor.py::PostProcessDescriptors`` and ``ApplyPcaAndWhitening``.

A PCA is a mapping of numpy arrays, saved with ``np.savez`` and read with
``np.load(allow_pickle=False)``:

- ``mean [C]`` float32: mean of the (L2-normalised) training descriptors;
- ``projection [dim, C]`` float32: principal axes as rows, by decreasing variance;
- ``variances [dim]`` float32: the variance along each axis;
- ``whiten []`` bool: divide by ``sqrt(variances)`` when applied.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visloc.io.atomic import atomic_path
from visloc.io.outputs import has_magic
from visloc.weights.load import WeightsError

PCA_KEYS = ("mean", "projection", "variances", "whiten")
#: DELF's descriptor size after PCA (``delf_config_example.pbtxt``: ``pca_dim: 40``)
DELF_PCA_DIM = 40


def learn_delf_pca(descriptors: np.ndarray, dim: int = DELF_PCA_DIM, whiten: bool = True) -> dict[str, np.ndarray]:
    """PCA of DELF descriptors (``block3`` features of database images).

    Args:
        descriptors: ``[N, C]`` descriptors, L2-normalised here first (as DELF's extractor does before PCA).
        dim: output dimension, ``1 <= dim <= min(N, C)``.
        whiten: record that the projection divides by the axes' standard deviations.

    Returns:
        the PCA mapping (module docstring).
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"descriptors: expected [N >= 2, C], got {x.shape}")
    if not 1 <= dim <= min(x.shape):
        raise ValueError(f"dim: expected 1 <= dim <= min(N, C) = {min(x.shape)}, got {dim}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:dim]
    return {"mean": mean.astype(np.float32), "projection": vectors[:, order].T.astype(np.float32),
            "variances": np.maximum(values[order], 0.0).astype(np.float32), "whiten": np.asarray(bool(whiten))}


def learn_delf_pca_from_features(features: str | Path, out: str | Path, dim: int = DELF_PCA_DIM,
                                 whiten: bool = True, max_descriptors: int = 200_000, seed: int = 0) -> Path:
    """Learn DELF's PCA from raw ``delf`` database features and write it to ``out`` (``visloc delf-pca``).

    The features come from ``visloc extract --conf delf`` without ``pca``. At most ``max_descriptors``
    descriptors are used, drawn uniformly without replacement with ``seed`` (DELF's reference fits its PCA
    on a sample of index-image descriptors too).

    Raises:
        FeatureStoreError: ``features`` is missing or not a feature file.
        InputError: the file holds no descriptors, or too few for ``dim`` (the message names it).
        OutputError: ``out`` exists and is not a DELF PCA file.
        OutputLockedError: another job is writing ``out``.
    """
    from visloc.io.locks import output_lock
    from visloc.io.outputs import check_file_output

    check_file_output(out, "DELF PCA (.npz)", is_delf_pca)
    if not Path(features).is_file():
        from visloc.io.features_h5 import FeatureStoreError

        raise FeatureStoreError(f"{features}: feature file not found")
    with output_lock(out):
        return save_delf_pca(out, learn_delf_pca(_sample(Path(features), dim, max_descriptors, seed), dim, whiten))


def _sample(features: Path, dim: int, max_descriptors: int, seed: int) -> np.ndarray:
    """At most ``max_descriptors`` local descriptors of ``features`` (seeded), checked to be enough for ``dim``."""
    from visloc.errors import InputError
    from visloc.io.features_h5 import list_feature_names, read_features

    chunks = []
    for name in list_feature_names(features):
        descriptors = read_features(features, name).get("descriptors")
        if descriptors is not None and len(descriptors):
            chunks.append(descriptors)
    if not chunks:
        raise InputError(f"{features}: no local descriptors to learn a PCA from")
    x = np.concatenate(chunks)
    if x.shape[1] < dim or len(x) < dim:
        raise InputError(f"{features}: {len(x)} descriptors of {x.shape[1]}-d, too few for a {dim}-d PCA "
                         "(extract with --conf delf and no pca)")
    if len(x) > max_descriptors:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_descriptors, replace=False))]
    return x


def save_delf_pca(path: str | Path, pca: dict[str, np.ndarray]) -> Path:
    """Write ``pca`` to ``path`` (``.npz``) atomically; returns ``path``."""
    check_delf_pca(pca, str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mean=pca["mean"], projection=pca["projection"], variances=pca["variances"],
                 whiten=np.asarray(pca["whiten"]))
    return Path(path)


def load_delf_pca(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PCA written by ``save_delf_pca``; a missing or malformed file is a one-line ``WeightsError``."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: DELF PCA file not found")
    try:
        with np.load(p, allow_pickle=False) as data:
            pca = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{p}: not a DELF PCA .npz file ({str(e)[:80]})") from None
    check_delf_pca(pca, str(p))
    return pca


def is_delf_pca(path: Path) -> bool:
    """Whether ``path`` is a DELF PCA file (an ``.npz`` zip archive that ``load_delf_pca`` reads)."""
    if not has_magic(path, b"PK\x03\x04"):
        return False
    try:
        load_delf_pca(path)
    except WeightsError:
        return False
    return True


def check_delf_pca(pca: dict[str, np.ndarray], where: str = "pca") -> None:
    """``WeightsError`` naming ``where`` when ``pca`` lacks a key or its shapes disagree."""
    missing = [k for k in PCA_KEYS if k not in pca]
    if missing:
        raise WeightsError(f"{where}: DELF PCA without {missing} (expected {list(PCA_KEYS)})")
    mean, proj, var = (np.asarray(pca[k]) for k in ("mean", "projection", "variances"))
    if mean.ndim != 1 or proj.ndim != 2 or proj.shape[1] != len(mean) or var.shape != (proj.shape[0],):
        raise WeightsError(f"{where}: DELF PCA shapes mean {mean.shape}, projection {proj.shape}, variances "
                           f"{var.shape} do not fit ([C], [dim, C], [dim])")


def apply_delf_pca(descriptors: torch.Tensor, pca: dict[str, np.ndarray]) -> torch.Tensor:
    """DELF's post-processing: ``[N, C]`` -> L2 -> ``(d - mean) P^T`` (/ sqrt(var)) -> L2, ``[N, dim]``."""
    mean = torch.as_tensor(pca["mean"], dtype=torch.float32, device=descriptors.device)
    proj = torch.as_tensor(pca["projection"], dtype=torch.float32, device=descriptors.device)
    if descriptors.shape[-1] != len(mean):
        raise ValueError(f"descriptors: a DELF PCA of {len(mean)}-d descriptors got {descriptors.shape[-1]}-d ones")
    out = (F.normalize(descriptors.float(), dim=-1) - mean) @ proj.T
    if bool(pca["whiten"]):
        var = torch.as_tensor(pca["variances"], dtype=torch.float32, device=descriptors.device)
        out = out / var.clamp(min=1e-12).sqrt()
    return F.normalize(out, dim=-1)


__all__ = ["DELF_PCA_DIM", "PCA_KEYS", "apply_delf_pca", "check_delf_pca", "learn_delf_pca",
           "learn_delf_pca_from_features", "load_delf_pca", "is_delf_pca",
           "save_delf_pca"]
