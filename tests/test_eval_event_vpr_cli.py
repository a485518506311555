"""``visloc eval event-vpr`` end to end on a tiny simulated event drive, with a random model, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app

runner = CliRunner()
TRAVERSALS = [{"name": "d1", "condition": "day"},
              {"name": "d2", "condition": "day", "lateral_offset_m": 0.5, "speed_scale": 0.8},
              {"name": "n1", "condition": "night"}]


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 x 48 event drive of a ~50 m route: d1, d2 (day) and n1 (night), test split (~15 s of CPU to make)."""
    from visloc.conf import apply_overrides
    from visloc.pipelines.event_drive import EventDriveConf, generate_event_drive

    conf = apply_overrides(EventDriveConf(), {"width": 64, "height": 48, "focal": 50.0, "route_length_m": 20.0,
                                              "traversals": TRAVERSALS, "events": {"max_flow_px": 2.0}})
    root = tmp_path_factory.mktemp("event_drive") / "drive"
    generate_event_drive(conf, root, split="test", progress=False)
    return root


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised small event-vpr checkpoint (voxel grid, 5 bins, 32 px input, 2 clusters)."""
    from visloc.events.vpr import build_event_vpr
    from visloc.models.event_vpr import EventVPRConf
    from visloc.weights.checkpoint import save_model

    torch.manual_seed(0)
    model = build_event_vpr(EventVPRConf(representation="voxel-grid", bins=5, input_size=32, num_clusters=2))
    return save_model(tmp_path_factory.mktemp("model") / "event_vpr.pt", "event-vpr", model)


def test_events_recall_table_and_json(tiny_drive: Path, random_model: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    res = invoke("eval", "event-vpr", "--model", random_model, "--database", tiny_drive / "d1",
                 "--queries", tiny_drive / "d2", "--queries", tiny_drive / "n1", "--set", "count=5000",
                 "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"event-vpr on {tiny_drive} (test split): database d1, queries d2, n1")
    table = [ln.split() for ln in lines if ln.startswith("events ")]
    assert [(r[1], r[2], r[3]) for r in table] == [("d1", "d2", "day->day"), ("d1", "n1", "day->night")]
    data = json.loads(out.read_text())
    assert (data["database"], data["queries"], data["split"]) == ("d1", ["d2", "n1"], "test")
    assert data["windows"] == {"stride_m": 2.0, "kind": "count", "count": 5000, "duration_us": 50000}
    assert data["protocol"] == {"radius_m": 25.0, "ns": [1, 5, 10, 20]}
    assert [r["method"] for r in data["rows"]] == ["chance"] * 4 + ["events"] * 4
    rows = {(r["queries"], r["pooled"]): r for r in data["rows"] if r["method"] == "events"}
    assert set(rows) == {("d2", False), ("n1", False), ("d2", True), ("n1", True)}
    for (name, _), r in rows.items():
        assert r["method"] == "events" and r["num_queries"] == data["num_places"][name] > 5
        recalls = [r[f"recall@{n}"] for n in (1, 5, 10, 20)]
        assert recalls == sorted(recalls) and 0 <= recalls[0] <= recalls[-1] <= 1
        assert r["queries_without_positives"] == []  # the whole route is shorter than 2 x 25 m
    row_text = next(r for r in table if r[2] == "n1")
    assert row_text[4] == f"{100 * rows['n1', False]['recall@1']:.1f}"
    assert data["frames"] == {} and data["skipped"] == []


@pytest.mark.slow
def test_frame_baselines_on_the_same_places(tiny_drive: Path, random_model: Path, tmp_path: Path):
    from visloc.retrieval.vlad import load_vocabulary

    out, work = tmp_path / "r.json", tmp_path / "work"
    res = invoke("eval", "event-vpr", "--model", random_model, "--database", tiny_drive / "d1",
                 "--queries", tiny_drive / "n1", "--set", "count=5000", "--set", "stride_m=4",
                 "--frames", "hfnet-global,vlad-aliked,netvlad", "--frame-set", "vlad-aliked:num_clusters=8",
                 "--vocab-images", 1000, "--work", work, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    methods = [r["method"] for r in data["rows"] if not r["pooled"]]
    assert methods == ["chance", "events", "hfnet-global", "vlad-aliked"]
    assert len({r["num_queries"] for r in data["rows"]}) == 1  # the same places for every method
    assert data["skipped"] == ["netvlad: skipped, needs weights that visloc does not ship "
                               "(--frame-set netvlad:weights=FILE)"]
    assert data["skipped"][0] in res.stdout
    assert 0 < data["frames"]["hfnet-global"]["max_frame_offset_us"] <= 50_000  # frames at 10 Hz
    vocab = load_vocabulary(work / "vocab-d1-8.pt", 8)
    frames_d1 = len((tiny_drive / "d1" / "frames.txt").read_text().splitlines()) - 1
    assert vocab.source["images"] == frames_d1  # every database frame, and only those
    assert data["frames"]["vlad-aliked"]["vocabulary_learned_from"] == "d1 frames"
    assert [ln.split()[0] for ln in res.stdout.splitlines() if "day->night" in ln] == [
        "chance", "events", "hfnet-global", "vlad-aliked"]


def test_radius_n_and_batch_size_reach_the_evaluation(tiny_drive: Path, random_model: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    res = invoke("eval", "event-vpr", "--model", random_model, "--database", tiny_drive / "d1", "--queries",
                 tiny_drive / "n1", "--set", "count=5000", "--set", "stride_m=5", "--radius", 4, "--n", 1, "--n", 3,
                 "--batch-size", 3, "--out", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["protocol"] == {"radius_m": 4.0, "ns": [1, 3]}
    assert set(data["rows"][0]) >= {"recall@1", "recall@3"} and "recall@5" not in data["rows"][0]
    chance = data["rows"][0]  # 4 m at a place every 5 m: one positive per query at most, about 1 / P at R@1
    assert chance["method"] == "chance" and chance["recall@1"] < 0.2
    assert "R@3" in res.stdout and "R@5" not in res.stdout


def test_the_database_traversal_is_refused_as_a_query(tiny_drive: Path, random_model: Path):
    res = invoke("eval", "event-vpr", "--model", random_model, "--database", tiny_drive / "d1",
                 "--queries", tiny_drive / "d2", "--queries", f"{tiny_drive}/./d1/")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"error: {tiny_drive}/d1: the database traversal itself; queries "
                                               "must come from another traversal"]


def _error(res: Any) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_one_line_errors(tiny_drive: Path, random_model: Path, tmp_path: Path):
    def ev(model: Path, db: Path, query: Path) -> str:
        return _error(invoke("eval", "event-vpr", "--model", model, "--database", db, "--queries", query))

    assert "no such traversal folder" in ev(random_model, tiny_drive / "d1", tiny_drive / "d9")
    copy = tmp_path / "drive"
    shutil.copytree(tiny_drive, copy, ignore=lambda d, names: ["events.h5"] if Path(d).name == "n1" else [])
    assert "no traversal 'n1' with events (it has d1, d2)" in ev(random_model, copy / "d1", copy / "n1")
    other = tmp_path / "other" / "d2"
    other.mkdir(parents=True)
    assert "not a traversal of" in ev(random_model, tiny_drive / "d1", other)
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert str(garbage) in ev(garbage, tiny_drive / "d1", tiny_drive / "d2")
    hfnet = Path(__file__).parents[1] / "src" / "visloc" / "weights" / "hfnet_default.pt"
    assert "a checkpoint of model 'hfnet', expected 'event-vpr'" in ev(hfnet, tiny_drive / "d1", tiny_drive / "d2")
    assert str(tmp_path / "none.pt") in ev(tmp_path / "none.pt", tiny_drive / "d1", tiny_drive / "d2")
    bad_set = _error(invoke("eval", "event-vpr", "--model", random_model, "--database", tiny_drive / "d1",
                            "--queries", tiny_drive / "d2", "--set", "kind=sliding"))
    assert "kind" in bad_set


@pytest.mark.slow
def test_benchmark_script_writes_the_side_by_side_table(tiny_drive: Path, random_model: Path, tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "event_vpr_table.py"), str(tiny_drive),
                           "--model", str(random_model), "--frames", "netvlad", "--set", "count=5000",
                           "--set", "stride_m=4", "--out", str(md), "--json", str(js), "--device", "cpu"],
                          capture_output=True, text=True, env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin"},
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = md.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| day->")]
    assert [r.split(" | ")[:2] for r in rows] == [["| day->day", "d2"], ["| day->night", "n1"]]
    assert "| database -> queries | query traversals | chance R@1/5/10 | events R@1/5/10 |" in text
    assert "- netvlad: skipped, needs weights" in text and "(test split)" in text
    data = json.loads(js.read_text())
    events = next(r for r in data["rows"] if r["method"] == "events" and r["pooled"] and r["queries"] == "n1")
    cell = rows[1].removesuffix(" |").split(" | ")[3]
    assert cell == " / ".join(f"{100 * events[f'recall@{n}']:.1f}" for n in (1, 5, 10))
