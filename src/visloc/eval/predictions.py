"""Stage 1 of an evaluation: run an extractor + matcher on pairs and cache the predictions.

The cache is an HDF5 file per (dataset, extractor conf, matcher conf), one group per pair with
``keypoints0 [N0, 2]``, ``keypoints1 [N1, 2]`` (original pixels), ``matches [M, 2]`` int32,
``scores [M]`` and the timings ``time_extract`` (seconds per image, mean of the two) and
``time_match``. A re-run reads finished pairs from the cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from visloc.features import EXTRACTORS
from visloc.features.api import extract_array
from visloc.io import parts
from visloc.matching import MATCHERS
from visloc.pipelines.common import conf_record
from visloc.pipelines.match_features import infer_matcher_overrides


@dataclass(frozen=True)
class Method:
    """An extractor + matcher with their resolved confs."""

    extractor: str
    matcher: str
    extractor_overrides: tuple[str, ...] = ()
    matcher_overrides: tuple[str, ...] = ()
    resize_max: int | None = 640

    def records(self) -> tuple[str, str]:
        """JSON records of both resolved confs."""
        resize = "null" if self.resize_max is None else str(self.resize_max)
        econf = EXTRACTORS.conf(self.extractor, (*self.extractor_overrides, f"resize_max={resize}"))
        mconf = MATCHERS.conf(self.matcher, infer_matcher_overrides(self.matcher, self.matcher_overrides,
                                                                     self.extractor))
        return conf_record(self.extractor, econf), conf_record(self.matcher, mconf)

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``aliked-n16+lightglue``."""
        return f"{self.extractor}+{self.matcher}"

    def key(self) -> str:
        """Hash of everything that changes predictions."""
        e, m = self.records()
        return hashlib.sha1(f"{e}|{m}|{self.resize_max}".encode()).hexdigest()[:10]


PairLoader = Callable[[], tuple[np.ndarray, np.ndarray]]


def default_cache_dir() -> Path:
    """``$VISLOC_CACHE`` or ``~/.cache/visloc``."""
    return Path(os.environ.get("VISLOC_CACHE", Path.home() / ".cache" / "visloc"))


def cache_path(cache_dir: Path, dataset: str, method: Method) -> Path:
    """Where the predictions of ``method`` on ``dataset`` are cached."""
    return Path(cache_dir) / "predictions" / dataset / f"{method.label}-{method.key()}.h5"


def read_predictions(path: Path, key: str) -> dict[str, np.ndarray]:
    """One pair's cached predictions."""
    with h5py.File(path, "r") as fd:
        return {k: v[()] for k, v in fd[key].items()}


def predict(pairs: Sequence[tuple[str, PairLoader]], method: Method, path: Path, device: str = "cpu",
            progress: bool = True) -> Path:
    """Run ``method`` on every ``(key, loader)`` not yet cached in ``path``; return ``path``.

    ``key`` is ``name0/name1`` (slashes inside names replaced); an image's features are computed once
    per run and reused by the other pairs that name it.
    """
    done: set[str] = set(parts.staged_names(path))
    if path.exists():
        with h5py.File(path, "r") as fd:
            fd.visititems(lambda k, o: done.add(k) if isinstance(o, h5py.Group) and "matches" in o else None)
    todo = [(k, load) for k, load in pairs if k not in done]
    if not todo:
        return path
    extractor = EXTRACTORS.build(method.extractor, method.extractor_overrides).to(device)
    matcher = MATCHERS.build(method.matcher, infer_matcher_overrides(method.matcher, method.matcher_overrides,
                                                                     method.extractor)).to(device)
    memo: dict[str, tuple[dict[str, np.ndarray], float]] = {}  # image name -> (features, seconds)

    def features(name: str, image: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        if name not in memo:
            if len(memo) >= 64:
                memo.pop(next(iter(memo)))
            t = time.perf_counter()
            memo[name] = (extract_array(extractor, image, method.resize_max, device), time.perf_counter() - t)
        return memo[name]

    try:
        for key, load in tqdm(todo, desc=f"predict {method.label}", disable=not progress, unit="pair"):
            name0, name1 = key.split("/", 1)  # keys are "name0/name1" with "/" in names replaced
            image0, image1 = load()
            (f0, dt0), (f1, dt1) = features(name0, image0), features(name1, image1)
            t1 = time.perf_counter()
            keep = ("keypoints", "descriptors", "scores", "image_size")
            pred = matcher({k: torch.from_numpy(f0[k]).to(device) for k in keep},
                           {k: torch.from_numpy(f1[k]).to(device) for k in keep})
            t2 = time.perf_counter()
            parts.write_part(path, key, {
                "keypoints0": f0["keypoints"], "keypoints1": f1["keypoints"],
                "matches": pred["matches"].cpu().numpy().astype(np.int32),
                "scores": pred["scores"].cpu().numpy().astype(np.float32),
                "time_extract": np.float64((dt0 + dt1) / 2), "time_match": np.float64(t2 - t1)})
    finally:
        parts.merge_parts(path, parts.write_group, {"method": "|".join(method.records()),
                                               "resize_max": str(method.resize_max)})
    return path
