"""Stage 2 of an evaluation: metrics from cached predictions, per protocol.

- homography: corner error of the estimated ``H_0to1`` (AUC at 1/3/5 px), match precision at 3 px.
- pose: relative pose from the essential matrix (intrinsics known), rotation / translation angular
  errors, AUC of their maximum at 5/10/20 degrees; match precision at 3 px by depth reprojection.
- stereo: end-point error of matches against a disparity map, precision at 3 px.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visloc.eval.predictions import read_predictions
from visloc.geometry import metrics
from visloc.geometry.estimators import Estimator, EstimatorConf, Model


@dataclass(frozen=True)
class PairResult:
    """Per-pair metrics, JSON-friendly."""

    key: str
    values: dict[str, float]


def matched_points(pred: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Matched keypoints ``[M, 2]`` of image 0 and image 1 (float64 pixels) from cached predictions."""
    m = pred["matches"].astype(np.int64).reshape(-1, 2)
    return pred["keypoints0"][m[:, 0]].astype(np.float64), pred["keypoints1"][m[:, 1]].astype(np.float64)


def common_metrics(pred: dict[str, np.ndarray], errors: np.ndarray) -> dict[str, float]:
    """Counts, timings and precision@3px (from per-match ground-truth ``errors [M]``) of one pair."""
    return {"num_keypoints": float(np.mean([len(pred["keypoints0"]), len(pred["keypoints1"])])),
            "num_matches": float(len(pred["matches"])),
            "precision@3px": metrics.match_precision(errors, 3.0),
            "time_extract": float(pred["time_extract"]), "time_match": float(pred["time_match"])}


def eval_homography_pair(pred: dict[str, np.ndarray], H_gt: np.ndarray, size0: tuple[int, int],
                         estimator: Estimator) -> dict[str, float]:
    """Metrics of one homography pair; ``size0 = (W, H)`` of image 0."""
    k0, k1 = matched_points(pred)
    est = estimator(k0, k1)
    out = common_metrics(pred, metrics.homography_match_errors(k0, k1, H_gt) if len(k0) else np.zeros(0))
    out["corner_error"] = metrics.homography_corner_error(est.model, H_gt, size0[0], size0[1])
    out["num_inliers"] = float(est.num_inliers)
    return out


def eval_pose_pair(pred: dict[str, np.ndarray], K0: np.ndarray, K1: np.ndarray, R_gt: np.ndarray,
                   t_gt: np.ndarray, estimator: Estimator, match_errors: np.ndarray) -> dict[str, float]:
    """Metrics of one calibrated pair; ``R_gt, t_gt`` is ``cam1_from_cam0``."""
    k0, k1 = matched_points(pred)
    est = estimator(k0, k1, K0, K1)
    err_R, err_t = metrics.relative_pose_error(est.R, est.t, R_gt, t_gt)
    out = common_metrics(pred, match_errors)
    out.update({"rotation_error": err_R, "translation_error": err_t,
                "pose_error": metrics.pose_error_max(err_R, err_t), "num_inliers": float(est.num_inliers)})
    return out


def run_protocol(cache: Path, keys: Sequence[str],
                 per_pair: Callable[[str, dict[str, np.ndarray]], dict[str, float]]) -> list[PairResult]:
    """Apply ``per_pair`` to each cached pair."""
    return [PairResult(k, per_pair(k, read_predictions(cache, k))) for k in keys]


def _finite_mean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else float("nan")


def aggregate(results: Sequence[PairResult], auc_key: str | None, thresholds: Sequence[float]) -> dict[str, Any]:
    """Means of every per-pair value (finite ones) plus AUCs of ``auc_key`` and its median."""
    keys = sorted({k for r in results for k in r.values})
    out: dict[str, Any] = {"num_pairs": len(results)}
    for k in keys:
        out[f"mean_{k}"] = _finite_mean([r.values[k] for r in results])
    if auc_key is not None and results:
        errs = [r.values[auc_key] for r in results]
        out.update(metrics.auc_table(errs, thresholds))
        out[f"median_{auc_key}"] = float(np.median(np.asarray(errs, dtype=np.float64)))
    return out


def default_estimator(model: Model, threshold: float) -> Estimator:
    """USAC MAGSAC++ for ``model`` with ``threshold`` pixels."""
    return Estimator(EstimatorConf(model=model, threshold=threshold))
