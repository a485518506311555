"""Absolute pose accuracy of localized queries and the time spent in each localization stage.

The protocol of visuallocalization.net (Sattler et al., "Benchmarking 6DOF outdoor visual localization
in changing conditions", CVPR 2018) and of HF-Net (Sarlin et al., CVPR 2019):

- a pose is ``cam_from_world`` (``x_cam = R x_world + t``), as COLMAP and the poses text files
  (``name qw qx qy qz tx ty tz``, read by ``visloc.io.poses``);
- the position error is the distance between the camera centres ``c = -R^T t``, in map units
  (metres for a metric map);
- the rotation error is the angle of ``R_gt^T R_pred`` in degrees;
- recall at a threshold ``(metres, degrees)`` is the fraction of *all* ground-truth queries whose two
  errors are both within it: a query that is missing from the predictions, or that the localizer's log
  marks as failed, counts as a failure;
- the median errors are taken over the localized queries only (``nan`` when none was localized).

The per-query log written by the localizer is JSON lines, one object per query with at least
``{"name": str, "success": bool, "timings": {stage: seconds}}`` (``"seconds"`` is read as ``"timings"``);
HF-Net's stage names are ``STAGES``, and any other stage name is reported as it comes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visloc.errors import InputError
from visloc.io.atomic import atomic_write_text
from visloc.io.poses import CameraPose, read_poses

STAGES: tuple[str, ...] = ("global", "local", "matching", "pnp")
"""Localization stages timed in the log, HF-Net's breakdown: global descriptor + retrieval, local
features, matching, PnP + RANSAC."""

TOTAL = "total"
"""The report's row of the time per query, all stages together."""

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
"""``(position in map units, rotation in degrees)``: the high / medium / coarse precision of Aachen."""


def parse_thresholds(spec: str) -> tuple[tuple[float, float], ...]:
    """Parse ``"0.25,2;0.5,5;5,10"`` into ``((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))``.

    Args:
        spec: ``position,degrees`` pairs separated by ``;``; each value > 0 (``inf`` allowed).

    Raises:
        InputError: One line quoting the part that is malformed.
    """
    out = []
    for part in spec.split(";"):
        if not part.strip():
            continue
        values = part.split(",")
        try:
            pos, rot = (float(v) for v in values)
        except ValueError:
            raise InputError(
                f"thresholds: expected 'position,degrees' pairs separated by ';' "
                f"(e.g. '0.25,2;0.5,5'), got {part.strip()!r}"
            ) from None
        if not (pos > 0 and rot > 0):  # also rejects nan
            raise InputError(f"thresholds: values must be > 0, got {part.strip()!r}")
        out.append((pos, rot))
    if not out:
        raise InputError(f"thresholds: no 'position,degrees' pair in {spec!r}")
    return tuple(out)


def position_error(gt: CameraPose, pred: CameraPose) -> float:
    """Distance between the camera centres ``-R^T t`` of two ``cam_from_world`` poses, in map units."""
    return float(np.linalg.norm(gt.center - pred.center))


def rotation_error(r_gt: np.ndarray, r_pred: np.ndarray) -> float:
    """Angle of ``R_gt^T R_pred`` in degrees, in ``[0, 180]``.

    ``atan2(|skew part|, trace - 1)`` rather than ``arccos((trace - 1) / 2)``: arccos loses half the
    digits near 0 and 180 degrees (its derivative is infinite there), and needs a clip when rounding
    pushes its argument past 1.

    Args:
        r_gt: Rotation ``[3, 3]`` (``cam_from_world``).
        r_pred: Rotation ``[3, 3]`` in the same convention.
    """
    d = np.asarray(r_gt, dtype=np.float64).T @ np.asarray(r_pred, dtype=np.float64)
    skew = np.array([d[2, 1] - d[1, 2], d[0, 2] - d[2, 0], d[1, 0] - d[0, 1]])
    return float(np.degrees(math.atan2(float(np.linalg.norm(skew)), float(np.trace(d)) - 1.0)))


@dataclass(frozen=True)
class StageTime:
    """Time of one stage over the queries of a log, in seconds.

    Attributes:
        mean: Mean over the queries that report the stage.
        median: Median over the same queries.
        total: Sum over the same queries.
        count: Queries that report the stage.
    """

    mean: float
    median: float
    total: float
    count: int


@dataclass(frozen=True)
class LocalizationReport:
    """Pose errors and recall of one run against its ground truth, and the stage timings of its log.

    Attributes:
        names: Every ground-truth query ``[Q]``, sorted.
        position_errors: ``[Q]`` map units; ``inf`` for a failed or missing query.
        rotation_errors: ``[Q]`` degrees; ``inf`` for a failed or missing query.
        thresholds: ``(position, degrees)`` pairs.
        recall: One fraction per threshold, over all ``Q`` queries.
        timings: ``{stage: StageTime}`` from the log (``stage_times``), ending with ``TOTAL`` per query;
            empty without a log.
        sources: ``{"gt": path, "pred": path, "log": path}`` of the files, when read from files.
    """

    names: tuple[str, ...]
    position_errors: np.ndarray
    rotation_errors: np.ndarray
    thresholds: tuple[tuple[float, float], ...]
    recall: tuple[float, ...]
    timings: dict[str, StageTime] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def localized(self) -> np.ndarray:
        """``[Q]`` bool: the query has a pose that the log does not mark as failed."""
        return np.isfinite(self.position_errors)

    def median_errors(self) -> tuple[float, float]:
        """Median position (map units) and rotation (degrees) errors of the localized queries; ``nan`` if none."""
        ok = self.localized
        if not ok.any():
            return math.nan, math.nan
        return float(np.median(self.position_errors[ok])), float(np.median(self.rotation_errors[ok]))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``nan`` and ``inf`` become ``None`` (valid JSON, no bare NaN tokens)."""
        med_pos, med_rot = self.median_errors()
        return {
            **self.sources,
            "num_queries": len(self.names),
            "num_localized": int(self.localized.sum()),
            "recall": [
                {"position": _num(p), "rotation_deg": _num(r), "recall": _num(v)}
                for (p, r), v in zip(self.thresholds, self.recall, strict=True)
            ],
            "median_position_error": _num(med_pos),
            "median_rotation_error_deg": _num(med_rot),
            "timings_s": {
                s: {"mean": _num(t.mean), "median": _num(t.median), "total": _num(t.total), "count": t.count}
                for s, t in self.timings.items()
            },
            "queries": [
                {"name": n, "position_error": _num(p), "rotation_error_deg": _num(r)}
                for n, p, r in zip(self.names, self.position_errors, self.rotation_errors, strict=True)
            ],
        }

    def write(self, path: str | Path) -> Path:
        """Write ``to_json`` atomically; ``allow_nan=False`` proves no NaN token slips through."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=False))

    def markdown(self) -> str:
        """Markdown tables: recall (percent) and median errors, then the stage timings (ms) when logged."""
        med_pos, med_rot = self.median_errors()
        heads = [f"{_fmt(p)} m, {_fmt(r)}°" for p, r in self.thresholds]
        lines = [
            "| queries | localized | " + " | ".join(heads) + " | median position | median rotation |",
            "|---:" * (len(heads) + 4) + "|",
            f"| {len(self.names)} | {int(self.localized.sum())} | "
            + " | ".join(f"{100 * v:.1f}" for v in self.recall)
            + f" | {med_pos:.3f} m | {med_rot:.2f}° |",
        ]
        if self.timings:
            lines += ["", "| stage | mean ms | median ms | total s | queries |", "|---|---:|---:|---:|---:|"]
            lines += [
                f"| {s} | {1e3 * t.mean:.1f} | {1e3 * t.median:.1f} | {t.total:.2f} | {t.count} |"
                for s, t in self.timings.items()
            ]
        return "\n".join(lines)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _fmt(x: float) -> str:
    return f"{x:g}"


def evaluate_poses(
    gt: Mapping[str, CameraPose],
    pred: Mapping[str, CameraPose],
    thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
    failed: Iterable[str] = (),
) -> LocalizationReport:
    """Errors and recall of predicted poses against ground truth (both ``cam_from_world``).

    Args:
        gt: Ground-truth pose of every query; the recall's denominator.
        pred: Predicted poses; a query absent from it is a failure.
        thresholds: ``(position in map units, rotation in degrees)`` pairs.
        failed: Queries to count as failures even if ``pred`` has a pose (the log's ``success: false``).

    Raises:
        ValueError: ``gt`` is empty, or ``pred`` / ``failed`` name a query that is not in ``gt``.
    """
    if not gt:
        raise ValueError("ground truth: no query")
    failed = set(failed)
    _check_known(pred, gt, "pred")
    _check_known(failed, gt, "failed")
    names = tuple(sorted(gt))
    pos = np.full(len(names), np.inf)
    rot = np.full(len(names), np.inf)
    for i, name in enumerate(names):
        if name in pred and name not in failed:
            pos[i] = position_error(gt[name], pred[name])
            rot[i] = rotation_error(gt[name].R, pred[name].R)
    thresholds = tuple((float(p), float(r)) for p, r in thresholds)
    recall = tuple(float(np.mean((pos <= p) & (rot <= r))) for p, r in thresholds)
    return LocalizationReport(names, pos, rot, thresholds, recall)


def _check_known(names: Iterable[str], gt: Mapping[str, CameraPose], label: str,
                 error: type[ValueError] = ValueError) -> None:
    unknown = sorted(set(names) - set(gt))
    if unknown:
        raise error(f"{label}: query {unknown[0]!r} is not in the ground truth ({len(unknown)} such queries)")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Read the localizer's JSON-lines log: one object per query with at least ``"name"``.

    Raises:
        InputError: ``<file>:<line>: <problem>`` for a line that is not a JSON object with a name, a
            non-boolean ``success`` or timings that are not non-negative seconds.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    records = []
    for num, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{num}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise InputError(f"{path}:{num}: expected a JSON object with a string 'name'")
        if not isinstance(rec.get("success", True), bool):
            raise InputError(f"{path}:{num}: 'success' must be true or false")
        timings = rec.get("timings", rec.get("seconds", {}))
        if not isinstance(timings, dict) or not all(_is_seconds(v) for v in timings.values()):
            raise InputError(f"{path}:{num}: 'timings' must map stage names to seconds >= 0")
        if TOTAL in timings:
            raise InputError(f"{path}:{num}: {TOTAL!r} is not a stage name (the report adds it up)")
        records.append(rec)
    return records


def _is_seconds(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def stage_times(records: Iterable[Mapping[str, Any]]) -> dict[str, StageTime]:
    """Mean / median / total seconds per stage over the log's records, then ``TOTAL`` per query.

    Stages come in the order the log first names them, except that the ``STAGES`` it names take their
    ``STAGES`` order among themselves. A stage missing from a record (a query that failed before it) is
    left out of that stage's numbers; ``TOTAL`` is the sum of each record's stages.
    """
    samples: dict[str, list[float]] = {}
    totals = []
    for rec in records:
        timings = record_timings(rec)
        for stage, seconds in timings.items():
            samples.setdefault(stage, []).append(float(seconds))
        if timings:
            totals.append(float(sum(timings.values())))
    order = list(samples)
    known = iter(s for s in STAGES if s in samples)
    order = [next(known) if s in STAGES else s for s in order]
    if totals:
        samples[TOTAL] = totals
        order.append(TOTAL)
    return {s: _stage_time(samples[s]) for s in order}


def _stage_time(seconds: list[float]) -> StageTime:
    return StageTime(float(np.mean(seconds)), float(np.median(seconds)), float(np.sum(seconds)), len(seconds))


def record_timings(record: Mapping[str, Any]) -> dict[str, float]:
    """``{stage: seconds}`` of a log record: its ``timings``, or ``seconds`` as ``visloc localize`` writes it."""
    return dict(record.get("timings", record.get("seconds", {})))


def evaluate_localization(
    gt_path: str | Path,
    pred_path: str | Path,
    *,
    log_path: str | Path | None = None,
    thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
) -> LocalizationReport:
    """Score a poses file against a ground-truth poses file, with the stage timings of an optional log.

    Args:
        gt_path: Ground-truth poses (``name qw qx qy qz tx ty tz``, ``cam_from_world``).
        pred_path: Predicted poses in the same format; failed queries are absent.
        log_path: The localizer's JSON-lines log; its ``success: false`` queries count as failures.
        thresholds: ``(position in map units, rotation in degrees)`` pairs.

    Raises:
        PoseFileError: A poses file is missing or malformed (one line naming it).
        InputError: The log is malformed, or a file names a query that is not in the ground truth.
    """
    gt = read_poses(gt_path)
    pred = read_poses(pred_path)
    records = read_log(log_path) if log_path is not None else []
    failed = [r["name"] for r in records if r.get("success") is False]
    _check_known(pred, gt, str(pred_path), InputError)
    _check_known((r["name"] for r in records), gt, str(log_path), InputError)
    if not gt:
        raise InputError(f"{gt_path}: no query")
    report = evaluate_poses(gt, pred, thresholds, failed)
    sources = {"gt": str(gt_path), "pred": str(pred_path)} | ({"log": str(log_path)} if log_path else {})
    return LocalizationReport(
        report.names,
        report.position_errors,
        report.rotation_errors,
        report.thresholds,
        report.recall,
        stage_times(records),
        sources,
    )
