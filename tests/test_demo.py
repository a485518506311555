"""The README's main job: ``visloc demo`` on a small version of the built-in scene."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.scene.config import SceneConf
from visloc.localization.localize import LocalizerConf
from visloc.pipelines import demo as demo_module
from visloc.pipelines.demo import run_demo

SMALL = dict(street_length_m=24.0, num_db=15, num_queries=6)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, SceneConf(**SMALL), extractor_overrides={"max_num_keypoints": 1024},
                       localizer=LocalizerConf(num_retrieved=4), progress=False)
    return out, summary


@pytest.mark.slow
def test_demo_localizes_the_built_in_scene(small_demo):
    out, summary = small_demo
    report = summary.report
    assert len(report.names) == 6
    # measured: 6/6 within (0.25 m, 2 deg), median ~1 cm; floors leave margin for other seeds / CPUs
    assert report.recall[0] >= 5 / 6
    assert report.recall[-1] == 1.0
    med_pos, med_rot = report.median_errors()
    assert med_pos < 0.05 and med_rot < 0.5
    assert set(summary.by_condition) == {"day", "night", "blur"}
    assert all(len(r.names) == 2 for r in summary.by_condition.values())
    assert summary.map.num_registered == 15 and summary.map.num_points > 500
    data = json.loads((out / "report.json").read_text())
    assert data["num_queries"] == 6
    assert data["recall"][0] == {"position": 0.25, "rotation_deg": 2.0, "recall": report.recall[0]}
    assert (out / "map.png").stat().st_size > 10_000
    assert set(summary.seconds) == {"render", "map", "localize", "picture"}
    text = "\n".join(summary.lines())
    assert "| night | 2 |" in text and "picture ->" in text


@pytest.mark.slow
def test_demo_rerun_reuses_the_scene_and_map(small_demo, caplog):
    out, first = small_demo
    mtime = (out / "scene" / "db" / "0000.png").stat().st_mtime_ns
    again = run_demo(out, SceneConf(**SMALL), extractor_overrides={"max_num_keypoints": 1024},
                     localizer=LocalizerConf(num_retrieved=4), progress=False)
    assert (out / "scene" / "db" / "0000.png").stat().st_mtime_ns == mtime
    assert again.map.seconds["matching"] < first.map.seconds["matching"]
    np.testing.assert_allclose(again.report.position_errors, first.report.position_errors, atol=1e-6)


def test_demo_cli_flags_reach_the_code(monkeypatch, tmp_path):
    seen = {}

    def fake(out, scene, extractor, ext_ov, matcher, match_ov, localizer, thresholds, device):
        seen.update(out=out, scene=scene, extractor=extractor, ext_ov=ext_ov, matcher=matcher, localizer=localizer,
                    thresholds=thresholds, device=device)
        raise ValueError("stop here")

    monkeypatch.setattr(demo_module, "run_demo", fake)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--set-scene", "seed=7",
                                      "--set-scene", "num_queries=9", "--extractor", "aliked-n16", "--set-extractor",
                                      "max_num_keypoints=512", "-k", "3", "--thresholds", "1,3;2,6",
                                      "--device", "cpu"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["scene"].seed == 7 and seen["scene"].num_queries == 9
    assert seen["extractor"] == "aliked-n16" and seen["ext_ov"]["max_num_keypoints"] == 512
    assert seen["localizer"].num_retrieved == 3
    assert seen["thresholds"] == ((1.0, 3.0), (2.0, 6.0)) and seen["device"] == "cpu"


def test_demo_bad_scene_override_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--set-scene", "num_db=10"])
    assert result.exit_code == 2
    assert "num_db" in result.output and "Traceback" not in result.output
