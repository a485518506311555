"""Evaluate an extractor + matcher on real ground truth: homography, relative pose and stereo.

Two stages: predictions are cached per method (``visloc.eval.predictions``), then metrics are
computed from the cache (``visloc.eval.protocols``) and written as JSON with the resolved confs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.eval import protocols
from visloc.eval.predictions import Method, cache_path, default_cache_dir, predict
from visloc.io.atomic import atomic_write_text
from visloc.io.images import read_image
from visloc.pipelines.common import pick_device

HomographyDataset = Literal["synthetic", "graf"]


@dataclass(frozen=True)
class EvalReport:
    """Summary metrics, per-pair metrics and what produced them.

    Attributes:
        dataset_key: the dataset's name in the prediction cache (``synthetic-seed0``, ``castle-step5``...):
            with ``method.key()`` it names the cached predictions the metrics were computed from.
    """

    protocol: str
    dataset: str
    method: Method
    estimator: dict[str, Any]
    summary: dict[str, Any]
    pairs: list[protocols.PairResult]
    dataset_key: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: the resolved confs, weights digests and visloc version (``Method.provenance``)."""
        econf, mconf = self.method.records()
        return {"protocol": self.protocol, "dataset": self.dataset, "dataset_key": self.dataset_key,
                "method": self.method.label, "cache_key": self.method.key(),
                "extractor": json.loads(econf) if econf is not None else None, "matcher": json.loads(mconf),
                "weights": self.method.weights(), "provenance": self.method.provenance(),
                "resize_max": self.method.resize_max, "estimator": self.estimator, "summary": self.summary,
                "pairs": {p.key: p.values for p in self.pairs}}

    def write(self, path: str | Path) -> Path:
        """Write the JSON report atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=True))


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold < float("inf"):
        raise InputError(f"threshold: expected pixels > 0, got {threshold}")


def evaluate_homography(method: Method, *, dataset: HomographyDataset = "synthetic", threshold: float = 3.0,
                        cache_dir: Path | None = None, device: str | None = None, progress: bool = True,
                        seed: int = 0) -> EvalReport:
    """Homography protocol on the built-in synthetic pairs or on OpenCV's graf pair.

    Args:
        method: extractor + matcher to evaluate (its predictions are cached).
        dataset: ``synthetic`` (built in, ``seed``) or ``graf`` (OpenCV's sample images).
        threshold: RANSAC inlier threshold in pixels.
        cache_dir: prediction cache root; None: ``eval.predictions.default_cache_dir()``.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.
        seed: seed of the synthetic pairs.
    """
    from visloc.data.homography import load_graf, synthetic_pairs

    if dataset not in ("synthetic", "graf"):
        raise InputError(f"dataset: expected synthetic or graf, got {dataset!r}")
    _check_threshold(threshold)
    data = synthetic_pairs(seed=seed) if dataset == "synthetic" else load_graf()
    by_key = {p.key: p for p in data}
    ds_name = f"{dataset}-seed{seed}" if dataset == "synthetic" else dataset
    cache = cache_path(cache_dir or default_cache_dir(), ds_name, method)
    predict([(p.key, lambda p=p: (p.image0, p.image1)) for p in data], method, cache, str(pick_device(device)),
            progress)
    est = protocols.default_estimator("homography", threshold)

    def per_pair(key: str, pred: dict[str, np.ndarray]) -> dict[str, float]:
        p = by_key[key]
        return protocols.eval_homography_pair(pred, p.H_0to1, (p.image0.shape[1], p.image0.shape[0]), est)

    results = protocols.run_protocol(cache, list(by_key), per_pair)
    summary = protocols.aggregate(results, "corner_error", (1.0, 3.0, 5.0))
    return EvalReport("homography", dataset, method, conf_to_dict(est.conf), summary, results, dataset_key=ds_name)


def evaluate_pose(method: Method, *, dataset: Literal["castle"] = "castle", step: int = 5, threshold: float = 1.0,
                  cache_dir: Path | None = None, device: str | None = None, progress: bool = True) -> EvalReport:
    """Relative-pose protocol on ViSP's Castle-simu, pairs ``step`` frames apart.

    Args:
        method: extractor + matcher to evaluate (its predictions are cached).
        dataset: ``castle`` (the ``visp-images-data`` package).
        step: frames between the two images of a pair (>= 1).
        threshold: RANSAC inlier threshold of the essential matrix in pixels.
        cache_dir: prediction cache root; None: ``eval.predictions.default_cache_dir()``.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.
    """
    from visloc.data import castle

    if dataset != "castle":
        raise InputError(f"dataset: expected castle, got {dataset!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InputError(f"step: expected an integer >= 1, got {step!r}")
    _check_threshold(threshold)
    frames = castle.load_castle()
    index_pairs = castle.castle_pairs(frames, step=step)
    keys = {f"{frames[i].name.replace('/', '-')}/{frames[j].name.replace('/', '-')}": (i, j)
            for i, j in index_pairs}
    ds_name = f"castle-step{step}"
    cache = cache_path(cache_dir or default_cache_dir(), ds_name, method)
    predict([(k, lambda i=i, j=j: (read_image(frames[i].image_path), read_image(frames[j].image_path)))
             for k, (i, j) in keys.items()], method, cache, str(pick_device(device)), progress)
    est = protocols.default_estimator("essential", threshold)

    def per_pair(key: str, pred: dict[str, np.ndarray]) -> dict[str, float]:
        f0, f1 = frames[keys[key][0]], frames[keys[key][1]]
        k0, k1 = protocols.matched_points(pred)
        errors = castle.depth_match_error(f0, f1, k0, k1) if len(k0) else np.zeros(0)
        R, t = castle.relative_pose(f0, f1)
        return protocols.eval_pose_pair(pred, f0.K, f1.K, R, t, est, errors)

    results = protocols.run_protocol(cache, list(keys), per_pair)
    summary = protocols.aggregate(results, "pose_error", (5.0, 10.0, 20.0))
    return EvalReport("pose", ds_name, method, conf_to_dict(est.conf), summary, results, dataset_key=ds_name)


def evaluate_stereo(method: Method, *, cache_dir: Path | None = None, device: str | None = None,
                    progress: bool = True) -> EvalReport:
    """Stereo protocol on skimage's Middlebury motorcycle pair: end-point error of matches.

    Args:
        method: extractor + matcher to evaluate (its predictions are cached).
        cache_dir: prediction cache root; None: ``eval.predictions.default_cache_dir()``.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.
    """
    from visloc.data.motorcycle import load_motorcycle, stereo_match_epe

    pair = load_motorcycle()
    key = f"{pair.name0}/{pair.name1}"
    cache = cache_path(cache_dir or default_cache_dir(), "motorcycle", method)
    predict([(key, lambda: (pair.left, pair.right))], method, cache, str(pick_device(device)), progress)

    def per_pair(key: str, pred: dict[str, np.ndarray]) -> dict[str, float]:
        k0, k1 = protocols.matched_points(pred)
        epe = stereo_match_epe(pair.disparity, k0, k1) if len(k0) else np.zeros(0)
        out = protocols.common_metrics(pred, epe)
        finite = epe[np.isfinite(epe)]
        out["epe_median"] = float(np.median(finite)) if len(finite) else float("nan")
        out["epe_mean"] = float(np.mean(finite)) if len(finite) else float("nan")
        return out

    results = protocols.run_protocol(cache, [key], per_pair)
    return EvalReport("stereo", "motorcycle", method, {}, protocols.aggregate(results, None, ()), results,
                      dataset_key="motorcycle")


def format_table(reports: Sequence[EvalReport], columns: Sequence[str]) -> str:
    """A Markdown table: one row per report, one column per summary key."""
    head = "| method | " + " | ".join(columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    rows = []
    for r in reports:
        vals = []
        for c in columns:
            v = r.summary.get(c, float("nan"))
            vals.append(f"{v:.3f}" if isinstance(v, float) and abs(v) < 100 else f"{v:.1f}"
                        if isinstance(v, float) else str(v))
        rows.append(f"| {r.method.label} | " + " | ".join(vals) + " |")
    return "\n".join([head, sep, *rows])


HOMOGRAPHY_COLUMNS = ("auc@1.0", "auc@3.0", "auc@5.0", "median_corner_error", "mean_precision@3px",
                      "mean_num_matches", "mean_num_inliers")
POSE_COLUMNS = ("auc@5.0", "auc@10.0", "auc@20.0", "median_pose_error", "mean_precision@3px",
                "mean_num_matches", "mean_num_inliers")
STEREO_COLUMNS = ("mean_epe_median", "mean_epe_mean", "mean_precision@3px", "mean_num_matches")
