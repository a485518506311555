"""Stage 1 of an evaluation: run a method on pairs and cache the predictions.

A ``Method`` has named slots: an extractor and a feature matcher, or an image matcher alone (its
``extractor`` slot is None). The cache is an HDF5 file per (dataset, method), one group per pair with
``keypoints0 [N0, 2]``, ``keypoints1 [N1, 2]`` (original pixels), ``matches [M, 2]`` int32,
``scores [M]`` and the timings ``time_extract`` (seconds per image, mean of the two; 0 for image
matchers, whose time is all matching) and ``time_match``. A re-run reads finished pairs from the cache.

The cache key covers everything that changes predictions: the resolved confs, the resize, the
sha256 of every weights file the parts resolve (``Capabilities.weights``: a retrained student or a
new vocabulary gives a new key) and visloc's version. The key's inputs are stored in the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

import visloc
from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.features.api import extract_image
from visloc.features.base import Extractor
from visloc.io import parts
from visloc.matching.select import check_feature_matcher, descriptor_family, matcher_conf
from visloc.registry import EXTRACTORS, MATCHERS

logger = logging.getLogger(__name__)


def _record(name: str, conf: Any) -> str:
    return json.dumps({"name": name, "conf": conf_to_dict(conf)}, sort_keys=True)


def file_digest(path: str | Path) -> str:
    """sha256 of a file (``"missing"`` when it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    from visloc.weights.records import sha256_of

    return sha256_of(p)


@dataclass(frozen=True)
class Method:
    """An extractor + feature matcher, or an image matcher alone (``extractor=None``)."""

    extractor: str | None
    matcher: str
    extractor_overrides: tuple[str, ...] = ()
    matcher_overrides: tuple[str, ...] = ()
    resize_max: int | None = 640

    @property
    def image_matcher(self) -> bool:
        """Whether the matcher is an image matcher (kind ``image``)."""
        return MATCHERS.kind_of(self.matcher) == "image"

    def confs(self) -> tuple[Any, Any]:
        """The resolved ``(extractor conf or None, matcher conf)``."""
        resize = "null" if self.resize_max is None else str(self.resize_max)
        if self.image_matcher:
            if self.extractor is not None:
                raise ValueError(f"{self.matcher} is an image matcher: the method takes no extractor")
            mconf = MATCHERS.conf(self.matcher, self.matcher_overrides)
            if hasattr(mconf, "resize_max"):
                mconf = MATCHERS.conf(self.matcher, (*self.matcher_overrides, f"resize_max={resize}"))
            return None, mconf
        if self.extractor is None:
            raise ValueError(f"{self.matcher} is a feature matcher: the method needs an extractor")
        check_feature_matcher(self.matcher, "an evaluation")
        econf = EXTRACTORS.conf(self.extractor, (*self.extractor_overrides, f"resize_max={resize}"))
        return econf, matcher_conf(self.matcher, self.matcher_overrides, descriptor_family(self.extractor, econf))

    def records(self) -> tuple[str | None, str]:
        """JSON records of both resolved confs (None for the missing extractor)."""
        econf, mconf = self.confs()
        return (None if econf is None else _record(str(self.extractor), econf)), _record(self.matcher, mconf)

    def weights(self) -> dict[str, str]:
        """Every weights file the parts resolve -> its sha256."""
        econf, mconf = self.confs()
        files: tuple[str, ...] = MATCHERS.capabilities(self.matcher, mconf).weights
        if econf is not None:
            files = EXTRACTORS.capabilities(str(self.extractor), econf).weights + files
        return {f: file_digest(f) for f in files}

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``aliked-n16+lightglue``."""
        return self.matcher if self.extractor is None else f"{self.extractor}+{self.matcher}"

    def provenance(self) -> dict[str, Any]:
        """Everything the cache key covers, JSON-ready."""
        e, m = self.records()
        return {"extractor": e, "matcher": m, "resize_max": self.resize_max,
                "weights": sorted(self.weights().values()), "visloc": visloc.__version__}

    def key(self) -> str:
        """Hash of everything that changes predictions."""
        return hashlib.sha1(json.dumps(self.provenance(), sort_keys=True).encode()).hexdigest()[:10]


PairLoader = Callable[[], tuple[np.ndarray, np.ndarray]]


def default_cache_dir() -> Path:
    """``$VISLOC_CACHE`` or ``~/.cache/visloc``."""
    return Path(os.environ.get("VISLOC_CACHE", Path.home() / ".cache" / "visloc"))


def cache_path(cache_dir: Path, dataset: str, method: Method) -> Path:
    """Where the predictions of ``method`` on ``dataset`` are cached."""
    return Path(cache_dir) / "predictions" / dataset / f"{method.label}-{method.key()}.h5"


def read_predictions(path: Path, key: str) -> dict[str, np.ndarray]:
    """One pair's cached predictions; ``InputError`` naming the file if the entry is malformed or unreadable."""
    try:
        with h5py.File(path, "r") as fd:
            grp = fd.get(key)
            if not isinstance(grp, h5py.Group):
                raise InputError(f"{path}: cached predictions {key!r} are missing or not a group (a damaged cache: "
                                 f"delete the file and re-run)")
            out: dict[str, np.ndarray] = {}
            for k, v in grp.items():
                if not isinstance(v, h5py.Dataset):
                    raise InputError(f"{path}: cached predictions {key}/{k} are not a dataset (a damaged cache: "
                                     f"delete the file and re-run)")
                out[k] = v[()]
            return out
    except OSError as e:
        raise InputError(f"{path}: the prediction cache cannot be read ({str(e).splitlines()[0][:80]}); delete the "
                         f"file and re-run") from None


def cached_keys(path: Path) -> set[str]:
    """The pairs cached in ``path`` (staged or merged).

    A cache file that cannot be read (cut short by a killed run, a full disk) is moved aside to
    ``<name>.damaged`` with a warning naming it, and the predictions are made afresh.
    """
    done: set[str] = set(parts.staged_names(path))
    if not path.exists():
        return done
    merged: set[str] = set()
    try:
        with h5py.File(path, "r") as fd:
            fd.visititems(lambda k, o: merged.add(k) if isinstance(o, h5py.Group) and "matches" in o else None)
    except OSError as e:
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        logger.warning("%s: unreadable prediction cache (%s), moved to %s; predicting afresh", path,
                       str(e).splitlines()[0][:80], aside)
        return done
    return done | merged


class _Predictor:
    """Runs a method on image pairs; extracted features are reused by the other pairs of an image."""

    def __init__(self, method: Method, device: str) -> None:
        econf, mconf = method.confs()
        self.method, self.device = method, device
        self.matcher = MATCHERS.build_conf(method.matcher, mconf).to(device)
        self.extractor = None if econf is None else EXTRACTORS.build_conf(str(method.extractor), econf).to(device)
        self.memo: dict[str, tuple[Any, float]] = {}

    def _features(self, extractor: Extractor, name: str, image: np.ndarray) -> tuple[Any, float]:
        if name not in self.memo:
            if len(self.memo) >= 64:
                self.memo.pop(next(iter(self.memo)))
            t = time.perf_counter()
            feats = extract_image(extractor, image, self.method.resize_max, self.device)
            self.memo[name] = (feats, time.perf_counter() - t)
        return self.memo[name]

    def __call__(self, key: str, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        extractor = self.extractor
        if extractor is None:
            from visloc.matching.api import match_images

            t = time.perf_counter()
            pred = match_images(self.matcher, image0, image1, self.method.resize_max, self.device)
            dt_extract, dt_match = 0.0, time.perf_counter() - t
            kp0, kp1 = pred.keypoints0, pred.keypoints1
            if kp0 is None or kp1 is None:  # match_images raises first; this narrows the Optional
                raise RuntimeError(f"{type(self.matcher).__name__}: an image matcher must return keypoints")
        else:
            name0, name1 = key.split("/", 1)  # keys are "name0/name1" with "/" in names replaced
            (f0, dt0), (f1, dt1) = self._features(extractor, name0, image0), self._features(extractor, name1, image1)
            t = time.perf_counter()
            pred = self.matcher(f0.to(self.device), f1.to(self.device))
            dt_extract, dt_match = (dt0 + dt1) / 2, time.perf_counter() - t
            kp0, kp1 = f0.keypoints, f1.keypoints
        matches, scores = pred.numpy()
        return {"keypoints0": kp0.cpu().numpy(), "keypoints1": kp1.cpu().numpy(),
                "matches": matches.astype(np.int32), "scores": scores,
                "time_extract": np.array(dt_extract, np.float64), "time_match": np.array(dt_match, np.float64)}


def predict(pairs: Sequence[tuple[str, PairLoader]], method: Method, path: Path, device: str = "cpu",
            progress: bool = True) -> Path:
    """Run ``method`` on every ``(key, loader)`` not yet cached in ``path``; return ``path``.

    ``key`` is ``name0/name1`` (slashes inside names replaced); with an extractor, an image's features
    are computed once per run and reused by the other pairs that name it.
    """
    done = cached_keys(path)
    todo = [(k, load) for k, load in pairs if k not in done]
    if not todo:
        return path
    run = _Predictor(method, device)
    try:
        for key, load in tqdm(todo, desc=f"predict {method.label}", disable=not progress, unit="pair"):
            image0, image1 = load()
            parts.write_part(path, key, run(key, image0, image1))
    finally:
        parts.merge_parts(path, parts.write_group, {"method": json.dumps(method.provenance(), sort_keys=True),
                                                    "resize_max": str(method.resize_max)})
    return path
