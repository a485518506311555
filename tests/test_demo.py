"""The README's main job: ``visloc demo`` on a small version of the built-in scene."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.scene.config import SceneConf
from visloc.localization.localize import LocalizerConf
from visloc.pipelines import demo as demo_module
from visloc.pipelines.demo import DEMO_LOCALIZER, run_demo

SMALL = dict(street_length_m=24.0, num_db=15, num_queries=6)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, scene=SceneConf(**SMALL), extractor_overrides={"max_num_keypoints": 1024},
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
    again = run_demo(out, scene=SceneConf(**SMALL), extractor_overrides={"max_num_keypoints": 1024},
                     localizer=LocalizerConf(num_retrieved=4), progress=False)
    assert (out / "scene" / "db" / "0000.png").stat().st_mtime_ns == mtime
    assert again.map.seconds["matching"] < first.map.seconds["matching"]
    np.testing.assert_allclose(again.report.position_errors, first.report.position_errors, atol=1e-6)


def test_demo_cli_flags_reach_the_code(fake_pipeline, tmp_path):
    from visloc.errors import InputError

    def stop(arguments):
        raise InputError("stop here")  # a user error of the pipeline: one line, exit code 2

    calls = fake_pipeline(demo_module, "run_demo", stop)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--set-scene", "seed=7",
                                      "--set-scene", "num_queries=9", "--extractor", "aliked-n16", "--set-extractor",
                                      "max_num_keypoints=512", "--matcher", "nn-mutual", "--set-matcher",
                                      "distance_threshold=0.7", "-k", "3", "--thresholds", "1,3;2,6",
                                      "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr == "error: stop here\n"
    (a,) = calls
    assert a["out"] == tmp_path and a["scene"].seed == 7 and a["scene"].num_queries == 9
    assert a["extractor"] == "aliked-n16" and a["extractor_overrides"] == {"max_num_keypoints": 512}
    assert a["matcher"] == "nn-mutual" and a["matcher_overrides"] == {"distance_threshold": 0.7}
    assert a["localizer"] == dataclasses.replace(DEMO_LOCALIZER, num_retrieved=3)
    assert a["thresholds"] == ((1.0, 3.0), (2.0, 6.0)) and a["device"] == "cpu" and a["progress"] is True


def test_demo_bad_scene_override_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--set-scene", "num_db=10"])
    assert result.exit_code == 2
    assert "num_db" in result.output and "Traceback" not in result.output
