"""Matching and two-view geometry metrics, in numpy float64.

Conventions follow glue-factory / LightGlue / SuperGlue / LoFTR evaluation code: homographies are
``H_0to1 [3, 3]`` mapping pixels of image 0 to image 1 (pixel centre at integer coordinates),
relative poses are ``cam1_from_cam0`` as ``R [3, 3]`` and ``t [3]``, angles are in degrees and
reprojection errors in pixels. An estimate that failed (``None`` or non-finite) gets an error of
``inf``, which every curve and AUC counts as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from visloc.geometry.transforms import image_corners, warp_points


def _array(x: object, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``x`` as float64, raising ``ValueError`` naming ``name`` unless it has ``shape`` (None: any)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != len(shape) or any(e is not None and e != s for e, s in zip(shape, arr.shape, strict=True)):
        expected = "[" + ", ".join("N" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{name} must have shape {expected}, got {list(arr.shape)}")
    return arr


def _finite_array(x: object, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Like ``_array`` for ground truth, which must also be finite."""
    arr = _array(x, name, shape)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have the same length N, got {len(a)} and {len(b)}")


def homography_corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, width: int, height: int) -> float:
    """Mean corner error of an estimated homography, as SuperPoint / LightGlue report it.

    Args:
        H_est: Estimated ``H_0to1 [3, 3]``, or ``None`` when estimation failed.
        H_gt: Ground-truth ``H_0to1 [3, 3]``.
        width: Width ``W`` of image 0 in pixels.
        height: Height ``H`` of image 0 in pixels.

    Returns:
        Mean L2 distance in pixels between the corners ``(0, 0), (W-1, 0), (W-1, H-1), (0, H-1)``
        warped by ``H_est`` and by ``H_gt``; ``inf`` when ``H_est`` is ``None`` or degenerate
        (non-finite entries, or a corner sent to infinity).
    """
    H_gt = _finite_array(H_gt, "H_gt", (3, 3))
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width} and {height}")
    if H_est is None:
        return float("inf")
    H_est = _array(H_est, "H_est", (3, 3))
    if not np.all(np.isfinite(H_est)):
        return float("inf")
    corners = image_corners(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        warped_est = warp_points(corners, H_est)
    warped_gt = warp_points(corners, H_gt)
    if not np.all(np.isfinite(warped_est)):
        return float("inf")
    return float(np.linalg.norm(warped_est - warped_gt, axis=1).mean())


def homography_match_errors(kpts0: np.ndarray, kpts1: np.ndarray, H_gt: np.ndarray) -> np.ndarray:
    """Reprojection error ``[N]`` in pixels of matches ``kpts0 [N, 2] <-> kpts1 [N, 2]`` under ``H_gt``.

    The error of match ``i`` is ``||warp(kpts0[i], H_gt) - kpts1[i]||``, with ``H_gt = H_0to1 [3, 3]``.
    """
    kpts0 = _array(kpts0, "kpts0", (None, 2))
    kpts1 = _array(kpts1, "kpts1", (None, 2))
    _same_length(kpts0, kpts1, "kpts0", "kpts1")
    H_gt = _finite_array(H_gt, "H_gt", (3, 3))
    if len(kpts0) == 0:
        return np.zeros(0)
    return np.linalg.norm(warp_points(kpts0, H_gt) - kpts1, axis=1)


def match_precision(errors: np.ndarray, threshold: float = 3.0) -> float:
    """Fraction of matches whose error ``[N]`` (pixels) is strictly below ``threshold``.

    NaN errors (matches without ground truth) are ignored; ``nan`` when none remain.
    """
    errors = _array(errors, "errors", (None,))
    valid = errors[~np.isnan(errors)]
    if len(valid) == 0:
        return float("nan")
    return float(np.mean(valid < threshold))


def pose_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the cumulative error curve up to each threshold, normalised to ``[0, 1]``.

    Exactly the SuperGlue / glue-factory ``pose_auc``, without glue-factory's rounding to 4
    decimals: the sorted errors with recalls ``(1..n) / n`` and the origin ``(0, 0)`` prepended
    are cut to the points with error strictly below ``t``, closed by ``(t, last recall)``, and
    the trapezoid area is divided by ``t``.

    Args:
        errors: Non-negative errors ``[n]`` (degrees or pixels); ``inf`` or ``nan`` mark failures,
            which are never recalled.
        thresholds: Positive thresholds in the unit of ``errors``.

    Returns:
        One AUC per threshold; ``nan`` for each when ``errors`` is empty.
    """
    errs = _array(errors, "errors", (None,))
    ts = _array(thresholds, "thresholds", (None,))
    if not np.all(np.isfinite(ts) & (ts > 0)):
        raise ValueError(f"thresholds must be positive and finite, got {ts.tolist()}")
    errs = np.where(np.isnan(errs), np.inf, errs)
    if np.any(errs < 0):
        raise ValueError("errors must be non-negative")
    if len(errs) == 0:
        return [float("nan")] * len(ts)
    errs = np.sort(errs)
    recall = np.arange(1, len(errs) + 1) / len(errs)
    errs = np.r_[0.0, errs]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in ts:
        last = int(np.searchsorted(errs, t))  # side="left": keeps errors < t
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errs[:last], t]
        area = np.sum((e[1:] - e[:-1]) * (r[1:] + r[:-1]) / 2)
        aucs.append(float(area / t))
    return aucs


def auc_table(errors: Sequence[float], thresholds: Sequence[float]) -> dict[str, float]:
    """``pose_auc`` as ``{"auc@{t}": value}``, keyed by each threshold as given."""
    return {f"auc@{t}": auc for t, auc in zip(thresholds, pose_auc(errors, thresholds), strict=True)}


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of ``R_est^T R_gt`` for rotations ``[3, 3]``; ``inf`` if ``R_est`` is non-finite."""
    R_est = _array(R_est, "R_est", (3, 3))
    R_gt = _finite_array(R_gt, "R_gt", (3, 3))
    if not np.all(np.isfinite(R_est)):
        return float("inf")
    cos = np.clip((np.trace(R_est.T @ R_gt) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cos)))


def translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle in degrees between translation directions ``[3]``, up to sign.

    Returns ``min(angle, 180 - angle)`` since an essential matrix fixes ``t`` only up to sign, so
    the result lies in ``[0, 90]``. ``nan`` when ``t_gt`` has zero length (the direction is
    undefined); ``inf`` when ``t_est`` has zero length or is non-finite (a failed estimate).
    """
    t_est = _array(t_est, "t_est", (3,))
    t_gt = _finite_array(t_gt, "t_gt", (3,))
    norm_gt = np.linalg.norm(t_gt)
    if norm_gt == 0:
        return float("nan")
    norm_est = np.linalg.norm(t_est)
    if not np.isfinite(norm_est) or norm_est == 0:
        return float("inf")
    cos = np.clip(np.dot(t_est, t_gt) / (norm_est * norm_gt), -1.0, 1.0)
    angle = np.rad2deg(np.arccos(cos))
    return float(min(angle, 180.0 - angle))


def relative_pose_error(
    R_est: np.ndarray | None, t_est: np.ndarray | None, R_gt: np.ndarray, t_gt: np.ndarray
) -> tuple[float, float]:
    """Rotation and translation errors in degrees of an estimated ``cam1_from_cam0`` pose.

    Args:
        R_est: Estimated rotation ``[3, 3]``, or ``None`` when estimation failed.
        t_est: Estimated translation ``[3]`` (any scale), or ``None`` when estimation failed.
        R_gt: Ground-truth rotation ``[3, 3]``.
        t_gt: Ground-truth translation ``[3]``.

    Returns:
        ``(err_R, err_t)`` from ``rotation_error_deg`` and ``translation_error_deg``;
        ``(inf, inf)`` when either estimate is ``None``.
    """
    R_gt = _finite_array(R_gt, "R_gt", (3, 3))
    t_gt = _finite_array(t_gt, "t_gt", (3,))
    if R_est is None or t_est is None:
        return float("inf"), float("inf")
    return rotation_error_deg(R_est, R_gt), translation_error_deg(t_est, t_gt)


def pose_error_max(err_R: float, err_t: float) -> float:
    """``max(err_R, err_t)`` in degrees, the error the standard pose AUC ranks; NaN propagates."""
    return float(np.maximum(err_R, err_t))


def end_point_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """End-point error ``[N]``: L2 distance between predicted and true points ``[N, 2]``."""
    pred = _array(pred, "pred", (None, 2))
    gt = _array(gt, "gt", (None, 2))
    _same_length(pred, gt, "pred", "gt")
    return np.linalg.norm(pred - gt, axis=1)


def summarize(values: Sequence[float], prefix: str) -> dict[str, float | int]:
    """Summary of per-item metric values for reports.

    Args:
        values: Values ``[n]``, where non-finite ones mark failures.
        prefix: Name of the metric, e.g. ``"H_error"``.

    Returns:
        ``{f"{prefix}_mean", f"{prefix}_median"}`` over the finite values (``nan`` if none) and
        ``f"{prefix}_num_nonfinite"``, the count of the others.
    """
    vals = _array(values, "values", (None,))
    finite = vals[np.isfinite(vals)]
    empty = len(finite) == 0
    return {
        f"{prefix}_mean": float("nan") if empty else float(np.mean(finite)),
        f"{prefix}_median": float("nan") if empty else float(np.median(finite)),
        f"{prefix}_num_nonfinite": int(len(vals) - len(finite)),
    }
