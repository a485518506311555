"""Local and global features in HDF5, in hloc's layout (hloc reads visloc's files and vice versa).

One group per image, named by its path relative to the image root (``/`` nests groups). Datasets:
``keypoints`` ``(N, 2)`` float32 ``(x, y)`` pixels in the original image, pixel-centre-at-0;
``scores`` ``(N,)``; ``descriptors`` ``(D, N)`` (note: transposed, as hloc); ``global_descriptor``
``(G,)``; ``image_size`` ``(2,)`` as ``(W, H)``. In memory visloc uses ``descriptors [N, D]``.

Commits go through ``visloc.io.shards``: ``<path>`` is then a small master of external links into
``<path>.shards/`` (read with plain h5py as above; ``shards.consolidate`` makes one self-contained
file). Every reader here accepts both layouts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from visloc.errors import VislocError
from visloc.io import parts, shards
from visloc.types import Features

LOCAL_KEYS = ("keypoints", "scores", "descriptors")
ITEM_KEYS = ("keypoints", "global_descriptor")  # a group holding one of these is an image


class FeatureStoreError(VislocError, ValueError):
    """A feature file that is missing, corrupt or lacks an image."""


def to_storage(feats: dict[str, np.ndarray], as_half: bool = False) -> dict[str, np.ndarray]:
    """In-memory features (``descriptors [N, D]``) -> arrays in hloc's on-disk layout."""
    out: dict[str, np.ndarray] = {}
    for key, value in feats.items():
        value = np.asarray(value)
        if key == "descriptors":
            value = value.T
        if as_half and value.dtype == np.float32 and key in ("descriptors", "global_descriptor", "scores"):
            value = value.astype(np.float16)
        if key == "keypoints":
            value = value.astype(np.float32)
        out[key] = value
    return out


def stage_features(path: str | Path, name: str, feats: dict[str, np.ndarray], as_half: bool = False) -> None:
    """Stage one image's features crash-safely; ``commit_features`` merges them into ``path``."""
    parts.write_part(Path(path), name, to_storage(feats, as_half))


def commit_features(path: str | Path, attrs: dict[str, str] | None = None) -> int:
    """Merge staged features into ``path`` atomically (root ``attrs`` set); return how many were added.

    Costs the staged data plus a copy of the small master, not a copy of the existing features.
    """
    return shards.commit(Path(path), parts.write_group, attrs)


def read_attrs(path: str | Path) -> dict[str, str]:
    """Root attributes of a feature or match file (visloc writes the resolved conf there)."""
    path = Path(path)
    if not path.exists():
        return {}
    with _open(path) as fd:
        return {k: str(v) for k, v in fd.attrs.items() if k not in shards.STORE_ATTRS}


def write_features(path: str | Path, features: dict[str, dict[str, np.ndarray]], as_half: bool = False) -> None:
    """Write several images' features at once (stage + commit)."""
    for name, feats in features.items():
        stage_features(path, name, feats, as_half)
    commit_features(path)


def list_feature_names(path: str | Path) -> list[str]:
    """Names of the images that have features in ``path`` (groups holding ``keypoints`` or a global)."""
    path = Path(path)
    if not path.exists():
        return []
    with _open(path) as fd:
        return _image_names(fd)


def _image_names(fd: h5py.File) -> list[str]:
    return shards.item_names(fd, ITEM_KEYS)


def done_names(path: str | Path) -> set[str]:
    """Images already finished: in the file or staged by an interrupted run."""
    return set(list_feature_names(path)) | parts.staged_names(Path(path))


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", libver="latest")
    except FileNotFoundError:
        raise FeatureStoreError(f"{path}: feature file not found") from None
    except OSError as e:
        raise FeatureStoreError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0][:80]})") from None


def read_features(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """One image's features with ``descriptors [N, D]`` float32 (whatever the stored dtype)."""
    path = Path(path)
    with _open(path) as fd:
        grp = shards.get_item(fd, name, FeatureStoreError)
        if not isinstance(grp, h5py.Group):
            raise FeatureStoreError(f"{path}: no features for image {name!r}")
        out = {key: shards.read_array(grp, key, FeatureStoreError, path)
               for key in grp.keys() if isinstance(grp[key], h5py.Dataset)}
    if "descriptors" in out:
        out["descriptors"] = np.ascontiguousarray(out["descriptors"].T, dtype=np.float32)
    for key in ("scores", "global_descriptor"):
        if key in out:
            out[key] = out[key].astype(np.float32)
    if "keypoints" in out:
        out["keypoints"] = out["keypoints"].astype(np.float32)
    return out


def read_global_descriptors(path: str | Path, names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The ``global_descriptor`` of each image, read in one pass over the file.

    Args:
        path: feature file.
        names: images to read, in this order; None reads every image of the file (sorted names).

    Returns:
        ``(names, descriptors [N, G] float32)``. A missing image, an image without a global
        descriptor, or descriptors of different sizes raise ``FeatureStoreError`` naming the file and image.
    """
    path = Path(path)
    rows: list[np.ndarray] = []
    with _open(path) as fd:
        names = _image_names(fd) if names is None else list(names)
        for name in names:
            grp = shards.get_item(fd, name, FeatureStoreError)
            if not isinstance(grp, h5py.Group):
                raise FeatureStoreError(f"{path}: no features for image {name!r}")
            if not isinstance(grp.get("global_descriptor"), h5py.Dataset):
                raise FeatureStoreError(f"{path}: image {name!r} has no global_descriptor")
            row = shards.read_array(grp, "global_descriptor", FeatureStoreError, path)
            if row.ndim != 1 or (rows and row.shape != rows[0].shape):
                expected = f"({len(rows[0])},)" if rows else "(G,)"
                raise FeatureStoreError(f"{path}: global_descriptor of {name!r} has shape {row.shape}, "
                                        f"expected {expected}")
            rows.append(row)
    if not rows:
        raise FeatureStoreError(f"{path}: no images to read global descriptors from")
    return names, np.stack(rows).astype(np.float32, copy=False)


def load_features(path: str | Path, name: str) -> Features:
    """One image's features as ``types.Features`` (``read_features`` gives the raw arrays).

    Raises:
        FeatureStoreError: the group is missing or malformed, or holds NaN or inf (never matched into nothing).
    """
    arrays = read_features(path, name)
    bad = sorted(k for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                 and not np.isfinite(v).all())
    if bad:
        raise FeatureStoreError(f"{path}: features of image {name!r} hold NaN or inf values ({', '.join(bad)})")
    try:
        return Features.from_numpy(arrays)
    except ValueError as e:
        if isinstance(e, FeatureStoreError):
            raise
        raise FeatureStoreError(f"{path}: features of image {name!r} are malformed ({e})") from None


def write_features_file(path: str | Path, features: dict[str, dict[str, np.ndarray]],
                        attrs: dict[str, str] | None = None, as_half: bool = False) -> Path:
    """Write a whole feature file at once, atomically (for outputs recomputed from scratch).

    Args:
        path: the file; replaced in one rename (a reader sees the old or the new file, never a mix).
        features: image name -> in-memory arrays (``descriptors [N, D]``).
        attrs: root attributes.
        as_half: store descriptors and scores as float16.
    """
    from visloc.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as fd:
        for key, value in (attrs or {}).items():
            fd.attrs[key] = value
        for name, arrays in features.items():
            parts.write_group(fd, name, to_storage(arrays, as_half))
    shutil.rmtree(shards.shards_dir(path), ignore_errors=True)  # a former sharded layout
    return path
