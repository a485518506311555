"""The README's main job: ``visloc demo`` on the built-in city, methods side by side, recall per condition."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_scene import CitySceneConf
from visloc.eval.localization import evaluate_poses
from visloc.io.poses import CameraPose
from visloc.localization.localize import LocalizerConf
from visloc.pipelines import demo as demo_module
from visloc.pipelines.demo import (
    DEFAULT_METHODS,
    DEMO_LOCALIZER,
    DemoMethod,
    DemoSummary,
    MethodResult,
    parse_method,
    run_demo,
)

CONDITIONS = {"day", "night", "fog", "blur"}
#: one street segment of the test split at 320x240, 21 database frames, 8 queries (2 per condition)
SMALL = CitySceneConf(city=CityConf(width=320, height=240, focal=250.0), streets=(3,), db_spacing_m=30.0,
                      num_queries=8)
SMALL_LOCALIZER = LocalizerConf(num_retrieved=5)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, scene=SMALL, localizer=SMALL_LOCALIZER, progress=False)


def _recalls(summary: DemoSummary) -> list[float]:
    return [v for r in summary.methods for rep in [r.report, *r.by_condition.values()] for v in rep.recall]


@pytest.mark.slow
def test_demo_maps_and_localizes_the_city_with_each_method(small_demo):
    out, summary = small_demo
    assert [r.method.name for r in summary.methods] == ["hfnet+nn-mutual", "sift+nn-ratio"]
    assert len(summary.scene.db_names) >= 15 and len(summary.scene.query_names) == 8
    for res in summary.methods:
        assert set(res.by_condition) == CONDITIONS
        assert all(len(rep.names) == 2 for rep in res.by_condition.values())
        assert res.map.num_registered == len(summary.scene.db_names) and res.map.num_points > 0
        assert len(res.report.names) == 8 and (res.out / "map.png").stat().st_size > 10_000
        assert set(res.seconds) == {"map", "localize", "picture"}
    assert all(0.0 <= v <= 1.0 for v in _recalls(summary))
    assert set(summary.seconds) == {"render", "hfnet+nn-mutual", "sift+nn-ratio"}
    data = json.loads((out / "report.json").read_text())
    assert data["scene"]["num_queries"] == 8 and set(data["methods"]) == {"hfnet+nn-mutual", "sift+nn-ratio"}
    by_cond = data["methods"]["sift+nn-ratio"]["by_condition"]
    assert set(by_cond) == CONDITIONS and by_cond["fog"]["num_queries"] == 2
    text = "\n".join(summary.lines())
    assert "| hfnet+nn-mutual | night | 2 |" in text and "| sift+nn-ratio | all | 8 |" in text
    assert "picture ->" in text


@pytest.mark.slow
def test_demo_rerun_reuses_the_scene_and_the_maps(small_demo):
    out, first = small_demo
    mtime = (out / "scene" / "db" / "0000.png").stat().st_mtime_ns
    again = run_demo(out, scene=SMALL, localizer=SMALL_LOCALIZER, progress=False)
    assert (out / "scene" / "db" / "0000.png").stat().st_mtime_ns == mtime
    for a, b in zip(again.methods, first.methods, strict=True):
        assert a.map.seconds["matching"] < b.map.seconds["matching"]
        np.testing.assert_allclose(a.report.position_errors, b.report.position_errors, atol=1e-6)


@pytest.mark.slow
def test_default_demo_separates_the_methods(tmp_path):
    """The full default world (minutes on CPU): every condition present, and no method at 100 % everywhere."""
    summary = run_demo(tmp_path, progress=False)
    assert len(summary.scene.db_names) >= 100 and len(summary.scene.query_names) == 48
    for res in summary.methods:
        assert set(res.by_condition) == CONDITIONS
        assert min(v for rep in res.by_condition.values() for v in rep.recall) < 1.0
    assert all(0.0 <= v <= 1.0 for v in _recalls(summary))


def _fake_result(name: str, day_localized: bool) -> MethodResult:
    """A method's result without a run: query 0 by day (localized or not), query 1 at night (failed)."""
    pose, thr = CameraPose(np.eye(3), np.zeros(3)), ((0.25, 2.0),)
    gt = {"query/0000.png": pose, "query/0001.png": pose}
    pred = {"query/0000.png": pose} if day_localized else {}
    failed = [n for n in gt if n not in pred]
    by_cond = {c: evaluate_poses({n: gt[n]}, {k: v for k, v in pred.items() if k == n}, thr,
                                 [f for f in failed if f == n]) for c, n in (("day", "query/0000.png"),
                                                                            ("night", "query/0001.png"))}
    return MethodResult(parse_method(name), None, None, None, evaluate_poses(gt, pred, thr, failed),  # type: ignore[arg-type]
                        by_cond, None, {"map": 1.0})  # type: ignore[arg-type]


def test_condition_table_has_a_row_per_method_and_condition():
    summary = DemoSummary(None, None, [_fake_result("hfnet+nn-mutual", True),  # type: ignore[arg-type]
                                       _fake_result("sift+nn-ratio", False)], {"render": 1.0})
    rows = summary.condition_table().splitlines()
    assert rows[0] == "| method | condition | queries | localized | 0.25 m, 2° |"
    assert rows[2:] == ["| hfnet+nn-mutual | day | 1 | 1 | 100.0 |", "| hfnet+nn-mutual | night | 1 | 0 | 0.0 |",
                        "| hfnet+nn-mutual | all | 2 | 1 | 50.0 |", "| sift+nn-ratio | day | 1 | 0 | 0.0 |",
                        "| sift+nn-ratio | night | 1 | 0 | 0.0 |", "| sift+nn-ratio | all | 2 | 0 | 0.0 |"]


def test_parse_method_names_and_defaults():
    assert parse_method("sift+nn-ratio") == DEFAULT_METHODS[1]  # with its own 2048 keypoints
    m = parse_method(" vlad-aliked + lightglue ")
    assert (m.extractor, m.matcher, m.name) == ("vlad-aliked", "lightglue", "vlad-aliked+lightglue")
    assert DemoMethod("configs/extract_sift_4k.yaml", "nn-ratio").name == "extract_sift_4k+nn-ratio"
    for bad in ("hfnet", "hfnet+", "+nn-mutual", "a+b+c"):
        with pytest.raises(ValueError, match="EXTRACTOR\\+MATCHER"):
            parse_method(bad)


def test_parse_method_retrieval_depth_and_vlad_xfeat_methods():
    for matcher in ("lighterglue", "nn-mutual"):  # XFeat retrieving by the VLAD of its own descriptors
        m = parse_method(f"vlad-xfeat+{matcher}")
        assert m.extractor_overrides == {"max_num_keypoints": 1024} and m.num_retrieved is None
        assert m.localizer(DEMO_LOCALIZER) is DEMO_LOCALIZER
    m = parse_method("vlad-xfeat+lighterglue@k3")
    assert m.name == "vlad-xfeat+lighterglue@k3" and m.num_retrieved == 3
    assert m.extractor_overrides == {"max_num_keypoints": 1024}  # the known method's own settings
    assert m.localizer(DEMO_LOCALIZER) == dataclasses.replace(DEMO_LOCALIZER, num_retrieved=3)
    assert parse_method("sift+nn-ratio@k5").num_retrieved == 5
    for bad in ("sift+nn-ratio@k0", "sift+nn-ratio@kx", "sift+nn-ratio@", "sift+nn-ratio@5"):
        with pytest.raises(ValueError, match="@kN with N >= 1"):
            parse_method(bad)
    with pytest.raises(ValueError, match="num_retrieved"):
        DemoMethod("sift", "nn-ratio", num_retrieved=0)


def test_parse_method_labelled_xfeat_subpixel_methods():
    for n in (1024, 1536, 2048):
        m = parse_method(f"xfeat-sub{n}@k3")
        assert (m.extractor, m.matcher, m.num_retrieved) == ("vlad-xfeat", "lighterglue", 3)
        assert m.extractor_overrides == {"max_num_keypoints": n, "subpixel": True}
        assert m.name == f"xfeat-sub{n}@k3" and parse_method(m.name) == m
        assert parse_method(f" xfeat-sub{n} ").num_retrieved is None
    with pytest.raises(ValueError, match="xfeat-sub1024"):  # the known labels are listed
        parse_method("xfeat-sub999")
    for bad in ("a+b", "", "x@k3", "a b"):
        with pytest.raises(ValueError, match="label"):
            DemoMethod("vlad-xfeat", "lighterglue", label=bad)


def test_run_demo_refuses_no_or_repeated_methods(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        run_demo(tmp_path, methods=())
    with pytest.raises(ValueError, match="each method once"):
        run_demo(tmp_path, methods=(DEFAULT_METHODS[0], DEFAULT_METHODS[0]))
    assert not (tmp_path / "scene").exists()


def test_demo_cli_flags_reach_the_code(fake_pipeline, tmp_path):
    from visloc.errors import InputError

    def stop(arguments):
        raise InputError("stop here")  # a user error of the pipeline: one line, exit code 2

    calls = fake_pipeline(demo_module, "run_demo", stop)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--set-scene", "city.seed=7",
                                      "--set-scene", "num_queries=9", "--method", "hfnet+nn-mutual", "--method",
                                      "aliked-n16+lightglue", "--set-extractor", "max_num_keypoints=512",
                                      "--set-matcher", "distance_threshold=0.7", "-k", "3", "--thresholds",
                                      "1,3;2,6", "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 2 and result.stderr == "error: stop here\n"
    (a,) = calls
    assert a["out"] == tmp_path and a["scene"].city.seed == 7 and a["scene"].num_queries == 9
    assert [m.name for m in a["methods"]] == ["hfnet+nn-mutual", "aliked-n16+lightglue"]
    assert a["extractor_overrides"] == {"max_num_keypoints": 512} and a["matcher_overrides"] == {
        "distance_threshold": 0.7}
    assert a["localizer"] == LocalizerConf(num_retrieved=3) != DEMO_LOCALIZER
    assert a["thresholds"] == ((1.0, 3.0), (2.0, 6.0)) and a["device"] == "cpu" and a["progress"] is True
    assert a["batch_size"] == 4

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--method", "xfeat+lighterglue"])
    assert result.exit_code == 2
    (xfeat,) = calls[-1]["methods"]  # a known method brings its own settings
    assert xfeat.extractor_overrides == {"max_num_keypoints": 1024} and xfeat.retrieval == "vlad-aliked"
    assert calls[-1]["batch_size"] == 1

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--method", "vlad-xfeat+nn-mutual@k2"])
    assert result.exit_code == 2
    (fast,) = calls[-1]["methods"]  # @kN: the method's own retrieval depth, the others keep --top-k
    assert (fast.name, fast.num_retrieved, fast.extractor_overrides) == ("vlad-xfeat+nn-mutual@k2", 2,
                                                                         {"max_num_keypoints": 1024})

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--method", "xfeat-sub1536@k3"])
    assert result.exit_code == 2
    (sub,) = calls[-1]["methods"]  # a labelled variant: its settings and the @kN
    assert (sub.name, sub.extractor, sub.num_retrieved, sub.extractor_overrides) == (
        "xfeat-sub1536@k3", "vlad-xfeat", 3, {"max_num_keypoints": 1536, "subpixel": True})

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--extractor", "sift"])  # one method
    assert result.exit_code == 2
    assert [(m.extractor, m.matcher) for m in calls[-1]["methods"]] == [("sift", "nn-mutual")]
    assert calls[-1]["scene"] == CitySceneConf()


@pytest.mark.parametrize("args, expected", [
    (["--set-scene", "db_spacing_m=0"], "CitySceneConf.db_spacing_m"),
    (["--set-scene", "query_conditions=[smog]"], "unknown part 'smog'"),
    (["--method", "hfnet"], "EXTRACTOR+MATCHER"),
    (["--method", "hfnet+nn-mutual", "--extractor", "sift"], "not both"),
])
def test_demo_bad_input_is_one_line(tmp_path, args, expected):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "Traceback" not in result.output
