"""Localization metrics: exact errors on constructed poses, recall with failures, the report, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from visloc.cli import app
from visloc.eval.localization import (
    DEFAULT_THRESHOLDS,
    STAGES,
    TOTAL,
    evaluate_localization,
    evaluate_poses,
    parse_thresholds,
    position_error,
    read_log,
    rotation_error,
    stage_times,
)
from visloc.io.poses import CameraPose, write_poses

R0 = Rotation.from_euler("xyz", [10, -25, 40], degrees=True).as_matrix()


def rot(axis: list[float], degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()


def moved(pose: CameraPose, offset: list[float], delta: np.ndarray | None = None) -> CameraPose:
    """``pose`` with its centre moved by ``offset`` (world) and its rotation composed with ``delta``."""
    r = pose.R @ (np.eye(3) if delta is None else delta)
    centre = pose.center + np.asarray(offset, dtype=np.float64)
    return CameraPose(r, -r @ centre)


def test_position_error_is_the_distance_between_centres():
    gt = CameraPose(R0, [1.0, -2.0, 3.0])
    assert position_error(gt, moved(gt, [0.3, 0.4, 0.0])) == pytest.approx(0.5, abs=1e-12)
    # the same translation vector with another rotation is another centre: not a translation difference
    assert position_error(CameraPose(np.eye(3), [0, 0, 1]), CameraPose(rot([0, 1, 0], 90), [0, 0, 1])) == (
        pytest.approx(math.sqrt(2), abs=1e-12)
    )


def test_rotation_error_exact_about_any_axis():
    for axis in ([1, 0, 0], [0, 1, 0], [1, 2, 3]):
        assert rotation_error(R0, R0 @ rot(axis, 3.0)) == pytest.approx(3.0, abs=1e-9)
    assert rotation_error(R0, R0) == 0.0


def test_rotation_error_is_accurate_at_0_and_180_degrees():
    assert rotation_error(np.eye(3), rot([0, 0, 1], 180.0)) == pytest.approx(180.0, abs=1e-9)
    assert rotation_error(R0, R0 @ rot([1, 1, 0], 180.0)) == pytest.approx(180.0, abs=1e-6)
    # arccos((trace - 1) / 2) returns 0 here (or ~1e-6 deg); atan2 keeps the digits
    assert rotation_error(np.eye(3), rot([0, 1, 0], 1e-7)) == pytest.approx(1e-7, rel=1e-6)
    assert rotation_error(np.eye(3), rot([0, 1, 0], 180 - 1e-6)) == pytest.approx(180 - 1e-6, abs=1e-9)


def scene() -> tuple[dict[str, CameraPose], dict[str, CameraPose]]:
    """Four GT queries: errors (0.1, 1 deg), (0.4, 4 deg), (3, 8 deg) and one missing."""
    gt = {f"q{i}.jpg": CameraPose(R0, [float(i), 0.0, 2.0]) for i in range(4)}
    pred = {
        "q0.jpg": moved(gt["q0.jpg"], [0.1, 0, 0], rot([0, 0, 1], 1)),
        "q1.jpg": moved(gt["q1.jpg"], [0, 0.4, 0], rot([1, 0, 0], 4)),
        "q2.jpg": moved(gt["q2.jpg"], [0, 0, 3.0], rot([0, 1, 0], 8)),
    }
    return gt, pred


def test_recall_counts_missing_queries_as_failures():
    gt, pred = scene()
    report = evaluate_poses(gt, pred)
    assert report.thresholds == DEFAULT_THRESHOLDS
    assert report.recall == pytest.approx((0.25, 0.5, 0.75))
    np.testing.assert_allclose(report.position_errors, [0.1, 0.4, 3.0, np.inf], atol=1e-12)
    np.testing.assert_allclose(report.rotation_errors, [1.0, 4.0, 8.0, np.inf], atol=1e-9)
    assert report.median_errors() == pytest.approx((0.4, 4.0))
    assert report.localized.tolist() == [True, True, True, False]


def test_failed_in_log_and_custom_thresholds():
    gt, pred = scene()
    report = evaluate_poses(gt, pred, thresholds=[(0.5, 5.0), (0.05, 30.0)], failed=["q1.jpg"])
    assert report.recall == pytest.approx((0.25, 0.0))
    assert report.localized.tolist() == [True, False, True, False]


def test_unknown_pred_name_is_an_error():
    gt, pred = scene()
    with pytest.raises(ValueError, match="pred: query 'extra.jpg' is not in the ground truth"):
        evaluate_poses(gt, {**pred, "extra.jpg": gt["q0.jpg"]})
    with pytest.raises(ValueError, match="ground truth: no query"):
        evaluate_poses({}, {})


def test_parse_thresholds():
    assert parse_thresholds("0.25,2;0.5,5;5,10") == DEFAULT_THRESHOLDS
    assert parse_thresholds(" 1 , 10 ; ") == ((1.0, 10.0),)
    for bad, msg in (
        ("1;2", "expected 'position,degrees'"),
        ("1,2,3", "expected"),
        ("a,2", "expected"),
        ("0,2", "must be > 0"),
        ("nan,2", "must be > 0"),
        (";", "no 'position,degrees' pair"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_thresholds(bad)


def test_report_json_has_no_nan_tokens(tmp_path):
    gt, _ = scene()
    report = evaluate_poses(gt, {})  # nothing localized: medians are nan, errors inf
    path = report.write(tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["median_position_error"] is None and data["num_localized"] == 0
    assert [r["recall"] for r in data["recall"]] == [0.0, 0.0, 0.0]
    assert data["queries"][0] == {"name": "q0.jpg", "position_error": None, "rotation_error_deg": None}


def write_files(tmp_path, log_lines: list[str] | None = None):
    gt, pred = scene()
    write_poses(tmp_path / "gt.txt", gt)
    write_poses(tmp_path / "pred.txt", pred)
    if log_lines is not None:
        (tmp_path / "log.jsonl").write_text("\n".join(log_lines) + "\n")
    return tmp_path / "gt.txt", tmp_path / "pred.txt", tmp_path / "log.jsonl"


LOG = [
    json.dumps(
        {
            "name": "q0.jpg",
            "success": True,
            "num_inliers": 80,
            "retrieved": ["db1.jpg"],
            "timings": {"global": 0.010, "local": 0.100, "matching": 0.200, "pnp": 0.010},
        }
    ),
    json.dumps(
        {
            "name": "q1.jpg",
            "success": False,
            "num_inliers": 3,
            "retrieved": [],
            "timings": {"global": 0.030, "local": 0.300, "matching": 0.400, "pnp": 0.030, "extra": 1.0},
        }
    ),
    "",
    json.dumps({"name": "q3.jpg", "success": False, "timings": {"global": 0.020}}),
]


def test_evaluate_files_with_log(tmp_path):
    gt, pred, log = write_files(tmp_path, LOG)
    report = evaluate_localization(gt, pred, log_path=log)
    assert report.recall == pytest.approx((0.25, 0.25, 0.5))  # q1 failed per the log
    assert list(report.timings) == [*STAGES, "extra", TOTAL]
    assert report.timings[TOTAL].total == pytest.approx(0.32 + 1.76 + 0.02)
    t = report.timings["global"]
    assert (t.mean, t.median, t.total, t.count) == pytest.approx((0.02, 0.02, 0.06, 3))
    assert report.timings["pnp"].count == 2 and report.timings["pnp"].mean == pytest.approx(0.02)
    table = report.markdown()
    assert "| 4 | 2 | 25.0 | 25.0 | 50.0 |" in table
    assert "| global | 20.0 | 20.0 | 0.06 | 3 |" in table
    assert report.to_json()["log"] == str(log)


def test_file_errors_name_the_file(tmp_path):
    gt, pred, log = write_files(tmp_path)
    (tmp_path / "bad.txt").write_text("q0.jpg 1 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected 'name qw qx qy qz tx ty tz'"):
        evaluate_localization(gt, tmp_path / "bad.txt")
    (tmp_path / "extra.txt").write_text(pred.read_text() + "zz.jpg 1 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"extra\.txt: query 'zz\.jpg' is not in the ground truth"):
        evaluate_localization(gt, tmp_path / "extra.txt")
    log.write_text(LOG[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:2: not JSON"):
        evaluate_localization(gt, pred, log_path=log)
    log.write_text(json.dumps({"name": "nowhere.jpg"}) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl: query 'nowhere\.jpg' is not in the ground truth"):
        evaluate_localization(gt, pred, log_path=log)
    with pytest.raises(ValueError, match=r"missing\.jsonl: file not found"):
        evaluate_localization(gt, pred, log_path=tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("record", "msg"),
    [
        ({"success": True}, "string 'name'"),
        ({"name": "a", "success": "yes"}, "'success' must be true or false"),
        ({"name": "a", "timings": {"pnp": -1}}, "'timings' must map stage names to seconds"),
        ({"name": "a", "timings": {"pnp": "fast"}}, "'timings' must map"),
    ],
)
def test_log_record_checks(tmp_path, record, msg):
    (tmp_path / "log.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=msg):
        read_log(tmp_path / "log.jsonl")


def test_stage_times_order_and_the_localizer_seconds_key():
    assert stage_times([]) == {}
    assert stage_times([{"name": "a", "timings": {}}]) == {}
    # HF-Net's stages take their STAGES order among themselves; other stages keep the log's order
    times = stage_times([{"name": "a", "timings": {"pnp": 1.0, "io": 2.0, "global": 3.0}}])
    assert list(times) == ["global", "io", "pnp", TOTAL]
    assert times[TOTAL].mean == 6.0 and times["io"].count == 1
    # visloc localize writes "seconds": {"extraction", "retrieval", "matching", "pose"}
    rec = {"name": "a", "seconds": {"extraction": 0.5, "retrieval": 0.125, "matching": 0.25, "pose": 0.0625}}
    times = stage_times([rec, {**rec, "seconds": {"extraction": 0.5}}])
    assert list(times) == ["extraction", "retrieval", "matching", "pose", TOTAL]
    assert (times["extraction"].count, times["pose"].count, times[TOTAL].median) == (2, 1, (0.9375 + 0.5) / 2)


def test_total_is_not_a_stage_name(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps({"name": "a", "timings": {TOTAL: 1.0}}) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:1: 'total' is not a stage name"):
        read_log(tmp_path / "log.jsonl")


runner = CliRunner()


def test_cli_flags_reach_the_code(tmp_path):
    gt, pred, log = write_files(tmp_path, LOG)
    out = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "localization",
            "--gt",
            str(gt),
            "--pred",
            str(pred),
            "--log",
            str(log),
            "--thresholds",
            "0.5,5;10,90",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["position"], r["rotation_deg"], r["recall"]) for r in data["recall"]] == [
        (0.5, 5.0, 0.25),
        (10.0, 90.0, 0.5),
    ]
    assert data["timings_s"]["matching"]["count"] == 2 and data["log"] == str(log)
    assert "| matching | 300.0 | 300.0 | 0.60 | 2 |" in result.output
    result = runner.invoke(app, ["eval", "localization", "--gt", str(gt), "--pred", str(pred)])
    assert result.exit_code == 0, result.output
    assert "0.25 m, 2°" in result.output and "| 4 | 3 | 25.0 | 50.0 | 75.0 |" in result.output
    assert "| stage |" not in result.output


def test_cli_errors_are_one_line(tmp_path):
    gt, pred, _ = write_files(tmp_path)
    result = runner.invoke(app, ["eval", "localization", "--gt", str(gt), "--pred", str(pred), "--thresholds", "1"])
    assert result.exit_code == 2
    assert "error: thresholds: expected 'position,degrees'" in result.output
    result = runner.invoke(app, ["eval", "localization", "--gt", str(tmp_path / "nope.txt"), "--pred", str(pred)])
    assert result.exit_code == 2
    assert "nope.txt: file not found" in result.output
