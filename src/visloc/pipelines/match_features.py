"""Match the local features of image pairs into an HDF5 match file (hloc layout), resumably."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from visloc.conf import parse_overrides
from visloc.errors import VislocError
from visloc.features import EXTRACTORS
from visloc.io import features_h5, matches_h5
from visloc.io.jobs import JobSummary
from visloc.io.pairs import read_pairs
from visloc.matching import MATCHERS
from visloc.pipelines.common import conf_record, conflicting_conf, pick_device
from visloc.pipelines.extract import ATTR as EXTRACTOR_ATTR

logger = logging.getLogger(__name__)
ATTR = "visloc_matcher"


class MatchError(VislocError, ValueError):
    """A matching job that cannot start (conflicting output)."""


def _check_compatible(out: Path, record: str) -> None:
    other = conflicting_conf(out, ATTR, record)
    if other is not None:
        raise MatchError(f"{out}: holds matches of another matcher or conf ({other}); "
                         "use another --out or delete it")


def infer_matcher_overrides(matcher: str, overrides: Mapping[str, Any] | Sequence[str],
                            extractor: str | None) -> dict[str, Any]:
    """Fill LightGlue's ``features`` from the extractor unless the user set it."""
    ov = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    if matcher == "lightglue" and "features" not in ov and extractor is not None:
        cls = EXTRACTORS.entry(extractor).builder
        feats = getattr(cls, "lightglue_features", None)
        if extractor == "aliked-t16" or feats is None:
            raise ValueError(f"lightglue: no pretrained weights for {extractor!r} features; "
                             "use --matcher nn-mutual (or nn-ratio)")
        ov["features"] = feats
    return ov


def _to_torch(feats: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in feats.items()}


def match_features(pairs: str | Path, features: str | Path, out: str | Path, matcher: str = "lightglue",
                   overrides: Mapping[str, Any] | Sequence[str] = (), features1: str | Path | None = None,
                   device: str | None = None, progress: bool = True) -> JobSummary:
    """Match every pair of the ``pairs`` file.

    Args:
        pairs: text file, ``name0 name1`` per line.
        features: feature file of image 0 (and of image 1 unless ``features1`` is given).
        out: HDF5 match file, created or extended; finished pairs are skipped.
        matcher: registered matcher name; LightGlue picks its weights from the features' extractor.
        overrides: matcher conf overrides.
        features1: feature file of the second images (e.g. database features).
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.
    """
    features, out = Path(features), Path(out)
    features1 = Path(features1) if features1 is not None else features
    extractor = json.loads(features_h5.read_attrs(features).get(EXTRACTOR_ATTR, "null") or "null")
    conf = MATCHERS.conf(matcher, infer_matcher_overrides(matcher, overrides, extractor and extractor["name"]))
    record = conf_record(matcher, conf)
    _check_compatible(out, record)  # else finished pairs of another conf would be skipped silently
    pair_list = read_pairs(pairs)
    done = matches_h5.done_pairs(out)
    todo = [p for p in pair_list if matches_h5.names_to_pair(*p) not in done
            and matches_h5.names_to_pair(p[1], p[0]) not in done]
    summary = JobSummary(out, already_done=len(pair_list) - len(todo))
    if not todo:
        return summary
    dev = pick_device(device)
    model = MATCHERS.entry(matcher).builder(conf).to(dev)
    cache: dict[tuple[Path, str], dict[str, np.ndarray]] = {}

    def load(path: Path, name: str) -> dict[str, np.ndarray]:
        if (path, name) not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[(path, name)] = features_h5.read_features(path, name)
        return cache[(path, name)]

    try:
        for name0, name1 in tqdm(todo, desc=f"match {matcher}", disable=not progress, unit="pair"):
            try:
                f0, f1 = load(features, name0), load(features1, name1)
            except features_h5.FeatureStoreError as e:
                summary.failed.append((f"{name0} {name1}", str(e)))
                continue
            keep = ("keypoints", "descriptors", "scores", "image_size")
            pred = model(_to_torch({k: f0[k] for k in keep if k in f0}, dev),
                         _to_torch({k: f1[k] for k in keep if k in f1}, dev))
            matches_h5.stage_matches(out, name0, name1, pred["matches0"].cpu().numpy(),
                                     pred["matching_scores0"].cpu().numpy())
            summary.done += 1
    finally:
        matches_h5.commit_matches(out, {ATTR: record})
    return summary
