"""The CLI's error boundary and its calls into the pipelines.

A ``VislocError`` from the library is the user's to fix: one line, exit code 2. Any other exception
is a bug: its traceback, a line asking to report it, exit code 1. Every command passes its flags by
name to a pipeline whose arguments after the paths are keyword-only; the fakes here are bound to
the real signatures (``fake_pipeline`` in conftest), so a renamed, dropped or reordered parameter
fails these tests.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from visloc import __version__
from visloc.cli import app
from visloc.conf import ConfError
from visloc.errors import InputError
from visloc.io.images import ImageError

runner = CliRunner()
HINT = f"visloc {__version__}: internal error (TypeError); please report it with the traceback above"


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _raise(error: BaseException):  # noqa: ANN202
    def fake(arguments: dict) -> None:
        raise error

    return fake


# --- the boundary -------------------------------------------------------------------------------------


def test_a_user_error_of_the_library_is_one_line_and_exit_2(fake_pipeline, tmp_path):
    import visloc.pipelines.extract as ex

    fake_pipeline(ex, "extract_features", _raise(ImageError(f"{tmp_path}/a.png: not an image\ndetails")))
    result = invoke("extract", tmp_path, "--out", tmp_path / "f.h5")
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}/a.png: not an image\n"


@pytest.mark.parametrize("error", [TypeError("boom"), ValueError("boom"), KeyError("boom"),
                                   FileNotFoundError("boom"), RuntimeError("boom")], ids=lambda e: type(e).__name__)
def test_a_bug_in_the_library_shows_its_traceback_and_exit_1(fake_pipeline, tmp_path, error):
    import visloc.pipelines.extract as ex

    fake_pipeline(ex, "extract_features", _raise(error))
    result = invoke("extract", tmp_path, "--out", tmp_path / "f.h5")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f"{type(error).__name__}: " in lines[-2] and "boom" in lines[-2]
    assert lines[-1] == HINT.replace("TypeError", type(error).__name__)
    assert "error: " not in result.stderr


@pytest.mark.parametrize("error, code", [(InputError("out.txt: cannot write\nmore"), 2), (TypeError("boom"), 1)])
def test_the_boundary_covers_command_bodies(monkeypatch, tmp_path, error, code):
    # 'pairs exhaustive' writes its pairs outside any run(): the root group applies the same rule
    import visloc.io.pairs as P

    def write_pairs(*args, **kwargs):
        raise error

    monkeypatch.setattr(P, "write_pairs", write_pairs)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    result = invoke("pairs", "exhaustive", "--out", tmp_path / "p.txt", "--images", tmp_path)
    assert result.exit_code == code
    if code == 2:
        assert result.stderr == "error: out.txt: cannot write\n"
    else:
        assert "Traceback (most recent call last):" in result.stderr and result.stderr.strip().endswith(HINT)


def test_usage_errors_and_exit_codes_pass_through():
    result = invoke("extract")
    assert result.exit_code == 2 and "Missing argument" in result.output and "internal error" not in result.output
    assert invoke("extract", "--help").exit_code == 0


def test_a_bad_option_value_is_a_user_error(tmp_path):
    cases = {("pairs", "sequential", "--out", tmp_path / "p.txt", "--images", tmp_path, "--window", 0):
             "--window: expected an integer >= 1, got 0",
             ("eval", "localization", "--gt", tmp_path / "gt.txt", "--pred", tmp_path / "p.txt", "--thresholds", "x"):
             "thresholds: expected 'position,degrees'",
             ("eval", "recall", "--pred", tmp_path / "p.npy", "--db-utm", tmp_path / "d.npy", "--query-utm",
              tmp_path / "q.npy", "--radius", 0): "radius: expected metres > 0",
             ("pairs", "exhaustive", "--out", tmp_path / "a.png" / "p.txt", "--images", tmp_path):
             "a.png is not a folder; choose another --out",  # a file where the output's folder should be
             ("extract", tmp_path, "--out", tmp_path / "f.h5", "--conf", "sift", "--set", "resize_max=4"):
             "resize_max: expected >= 8 pixels"}
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((32, 32), np.uint8))
    for args, expected in cases.items():
        result = invoke(*args)
        assert result.exit_code == 2 and expected in result.stderr, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # after progress bars
        assert len(errors) == 1 and expected in errors[0] and "Traceback" not in result.stderr


# --- keyword-only pipelines ---------------------------------------------------------------------------


PIPELINES = {  # function -> (module, number of leading path arguments)
    "extract_features": ("pipelines.extract", 2), "extract_features_ray": ("pipelines.extract_ray", 2),
    "match_features": ("pipelines.match_features", 3),
    "match_dense": ("pipelines.match_dense", 4), "match_images": ("pipelines.match_pair", 2),
    "build_index": ("pipelines.retrieve", 2), "retrieve_pairs": ("pipelines.retrieve", 3),
    "build_vocabulary": ("pipelines.vocab", 2), "build_map": ("pipelines.map_build", 2),
    "localize_queries": ("pipelines.localize", 3), "run_demo": ("pipelines.demo", 1),
    "evaluate_homography": ("pipelines.evaluate", 1), "evaluate_pose": ("pipelines.evaluate", 1),
    "evaluate_stereo": ("pipelines.evaluate", 1), "evaluate_retrieval": ("pipelines.evaluate_retrieval", 1),
    "evaluate_index": ("pipelines.evaluate_retrieval", 3), "evaluate_recall": ("pipelines.evaluate_retrieval", 1),
    "evaluate_localization": ("eval.localization", 2), "run_one": ("pipelines.bench", 2),
}


def _pipeline(name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(f"visloc.{PIPELINES[name][0]}"), name)


def test_pipelines_are_keyword_only_after_their_paths():
    for name, (_, num_paths) in PIPELINES.items():
        kinds = [p.kind for p in inspect.signature(_pipeline(name)).parameters.values()]
        assert kinds[:num_paths] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * num_paths, name
        assert set(kinds[num_paths:]) == {inspect.Parameter.KEYWORD_ONLY}, name


def test_eval_pipelines_default_to_the_automatic_device():
    for name in ("evaluate_homography", "evaluate_pose", "evaluate_stereo"):
        assert inspect.signature(_pipeline(name)).parameters["device"].default is None, name


# --- flags reach the code -----------------------------------------------------------------------------


def _stop(fake_pipeline, module: Any, name: str) -> list[dict]:
    """Fake ``module.name`` that records its bound arguments and stops the command with a user error."""
    return fake_pipeline(module, name, _raise(InputError("stop here")))


def _stopped(result: Any) -> None:
    assert result.exit_code == 2 and result.stderr == "error: stop here\n", result.output


def test_extract_flags_reach_the_code(fake_pipeline, tmp_path):
    import visloc.pipelines.extract as ex

    calls = _stop(fake_pipeline, ex, "extract_features")
    (tmp_path / "list.txt").write_text("a.png\nb.png\n")
    _stopped(invoke("extract", tmp_path, "--out", tmp_path / "f.h5", "--conf", "sift", "--set", "max_num_keypoints=9",
                    "--image-list", tmp_path / "list.txt", "--as-half", "--overwrite", "--device", "cpu",
                    "--batch-size", "4", "--num-workers", "2"))
    assert calls == [{"image_dir": tmp_path, "out": tmp_path / "f.h5", "extractor": "sift",
                      "overrides": {"max_num_keypoints": 9}, "image_list": ["a.png", "b.png"], "as_half": True,
                      "overwrite": True, "device": "cpu", "progress": True, "batch_size": 4, "num_workers": 2,
                      "crops": None}]


def test_extract_ray_flags_reach_the_code(fake_pipeline, tmp_path):
    import visloc.pipelines.extract_ray as er

    defaults = {k: p.default for k, p in inspect.signature(er.extract_features_ray).parameters.items()
                if k not in ("image_dir", "out")}
    calls = _stop(fake_pipeline, er, "extract_features_ray")
    _stopped(invoke("extract", tmp_path, "--out", tmp_path / "f.h5", "--conf", "sift", "--as-half", "--device", "cpu",
                    "--batch-size", "4", "--num-workers", "2", "--ray", "--ray-cpus", "3", "--cpus-per-task", "2",
                    "--gpus-per-task", "0.5", "--shard-size", "7"))
    assert calls == [{"image_dir": tmp_path, "out": tmp_path / "f.h5", "extractor": "sift", "overrides": {},
                      "image_list": None, "as_half": True, "overwrite": False, "device": "cpu", "progress": True,
                      "batch_size": 4, "num_workers": 2, "crops": None, "address": None, "num_cpus": 3,
                      "cpus_per_task": 2, "gpus_per_task": 0.5, "shard_size": 7, "max_retries": 3}]
    _stopped(invoke("extract", tmp_path, "--out", tmp_path / "f.h5", "--ray-address", "auto"))  # implies --ray
    assert calls[1] == {"image_dir": tmp_path, "out": tmp_path / "f.h5", **defaults, "overrides": {},
                        "address": "auto"}  # the CLI's defaults are the API's


def test_ray_options_without_ray_are_refused(tmp_path):
    for option, value in (("--shard-size", "8"), ("--ray-cpus", "2"), ("--cpus-per-task", "2"),
                          ("--gpus-per-task", "1")):
        result = invoke("extract", tmp_path, "--out", tmp_path / "f.h5", option, value)
        assert result.exit_code == 2 and "need --ray" in result.stderr, result.output


def test_match_features_and_match_dense_flags_reach_the_code(fake_pipeline, tmp_path):
    import visloc.pipelines.match_dense as md
    import visloc.pipelines.match_features as mf

    calls = _stop(fake_pipeline, mf, "match_features")
    _stopped(invoke("match-features", "--pairs", "p.txt", "--features", "f.h5", "--out", "m.h5", "--conf", "nn-ratio",
                    "--set", "ratio_threshold=0.7", "--features1", "g.h5", "--device", "cpu"))
    assert calls == [{"pairs": Path("p.txt"), "features": Path("f.h5"), "out": Path("m.h5"), "matcher": "nn-ratio",
                      "overrides": {"ratio_threshold": 0.7}, "features1": Path("g.h5"), "device": "cpu",
                      "progress": True}]
    calls = _stop(fake_pipeline, md, "match_dense")
    _stopped(invoke("match-dense", "--pairs", "p.txt", "--images", "I", "--features", "f.h5", "--out", "m.h5",
                    "--conf", "detector-pair", "--set", "a=1", "--cell-size", "3", "--device", "cpu"))
    assert calls == [{"pairs": Path("p.txt"), "images": Path("I"), "features": Path("f.h5"), "matches": Path("m.h5"),
                      "matcher": "detector-pair", "overrides": {"a": 1}, "quantize": md.QuantizeConf(cell_size=3.0),
                      "device": "cpu", "progress": True}]


def test_vocab_and_index_flags_reach_the_code(fake_pipeline, tmp_path):
    import visloc.pipelines.retrieve as rp
    import visloc.pipelines.vocab as vp

    calls = _stop(fake_pipeline, vp, "build_vocabulary")
    _stopped(invoke("vocab", "I", "--out", "v.pt", "--clusters", 16, "--max-images", 30, "--set", "resize_max=320",
                    "--device", "cpu"))
    (a,) = calls
    assert (a["image_dir"], a["out"], a["num_clusters"], a["max_images"]) == (Path("I"), Path("v.pt"), 16, 30)
    assert (a["overrides"], a["device"]) == (["resize_max=320"], "cpu")
    calls = _stop(fake_pipeline, rp, "build_index")
    _stopped(invoke("index", "build", "--features", "f.h5", "--out", "x.index", "--set", "kind=hnsw"))
    assert calls == [{"features": Path("f.h5"), "out": Path("x.index"), "overrides": ["kind=hnsw"]}]


def test_match_flags_reach_the_code(fake_pipeline):
    import numpy as np

    import visloc.pipelines.match_pair as mp

    calls = _stop(fake_pipeline, mp, "match_images")
    _stopped(invoke("match", "a.png", "b.png", "--extractor", "sift", "--matcher", "nn-ratio", "--model", "essential",
                    "--set-extractor", "max_num_keypoints=5", "--set-matcher", "ratio_threshold=0.9",
                    "--set-estimator", "threshold=2", "--intrinsics", "100,110,50,40", "--out", "m.png",
                    "--device", "cpu"))
    (a,) = calls
    assert (a["path0"], a["path1"], a["extractor"], a["matcher"], a["model"]) == (
        Path("a.png"), Path("b.png"), "sift", "nn-ratio", "essential")
    assert (a["extractor_overrides"], a["matcher_overrides"], a["estimator_overrides"]) == (
        ["max_num_keypoints=5"], ["ratio_threshold=0.9"], ["threshold=2"])
    K = np.array([[100, 0, 50], [0, 110, 40], [0, 0, 1]])
    np.testing.assert_array_equal(a["K0"], K)
    np.testing.assert_array_equal(a["K1"], K)
    assert (a["out"], a["device"]) == (Path("m.png"), "cpu")


def test_search_flags_reach_the_code(fake_pipeline):
    import visloc.pipelines.retrieve as rp
    from visloc.retrieval.rerank import RerankConf

    calls = fake_pipeline(rp, "retrieve_pairs", lambda a: rp.RetrieveSummary(a["out"], 1, 7, 0.0))
    result = invoke("search", "--index", "x.index", "--features", "q.h5", "--out", "p.txt", "-k", 7, "--rerank", 3,
                    "--db-features", "db.h5", "--rerank-model", "affine", "--rerank-threshold", 4,
                    "--rerank-matcher", "lightglue", "--set-rerank-matcher", "filter_threshold=0.2",
                    "--set-rerank-matcher", "depth_confidence=-1", "--rerank-min-inliers", 12)
    assert result.exit_code == 0, result.output
    assert calls == [{"index": Path("x.index"), "features": Path("q.h5"), "out": Path("p.txt"), "k": 7,
                      "rerank": RerankConf(top=3, db_features=Path("db.h5"), model="affine", threshold=4.0,
                                           matcher="lightglue",
                                           matcher_overrides=("filter_threshold=0.2", "depth_confidence=-1"),
                                           min_inliers=12)}]
    result = invoke("search", "--index", "x.index", "--features", "q.h5", "--out", "p.txt")
    assert result.exit_code == 0 and calls[-1]["rerank"] == RerankConf() and calls[-1]["k"] == 50


@pytest.mark.parametrize("args, expected", [
    (["--rerank", -1], "--rerank: expected >= 0, got -1"),
    (["--rerank", 2], "--rerank needs --db-features"),
    (["--rerank", 2, "--db-features", "db.h5", "--rerank-model", "essential"],
     "--rerank-model: expected one of homography, fundamental, affine, got 'essential'"),
    (["--rerank", 2, "--db-features", "db.h5", "--rerank-threshold", 0],
     "--rerank-threshold: expected a finite number > 0, got 0.0"),
    (["--rerank", 2, "--db-features", "db.h5", "--rerank-min-inliers", -3],
     "--rerank-min-inliers: expected an integer >= 0, got -3"),
])
def test_search_bad_rerank_options_are_one_line(fake_pipeline, args, expected):
    import visloc.pipelines.retrieve as rp

    calls = _stop(fake_pipeline, rp, "retrieve_pairs")
    result = invoke("search", "--index", "x.index", "--features", "q.h5", "--out", "p.txt", *args)
    assert result.exit_code == 2 and expected in result.stderr and len(result.stderr.splitlines()) == 1
    assert calls == []  # refused before the pipeline


def test_eval_retrieval_flags_reach_the_code(fake_pipeline):
    import visloc.pipelines.evaluate_retrieval as er
    from visloc.retrieval.rerank import RerankConf

    calls = _stop(fake_pipeline, er, "evaluate_index")
    _stopped(invoke("eval", "retrieval", "--gnd", "g.pkl", "--index", "x.index", "--features", "q.h5",
                    "--protocol", "classic", "--k", 2, "--k", 4, "--rerank", 5, "--db-features", "db.h5",
                    "--rerank-model", "fundamental", "--rerank-matcher", "nn-ratio", "--set-rerank-matcher",
                    "ratio_threshold=0.9", "--rerank-threshold", 2.5, "--rerank-min-inliers", 7))
    assert calls == [{"gnd_path": Path("g.pkl"), "index_path": Path("x.index"), "features": Path("q.h5"),
                      "protocol": "classic", "kappas": (2, 4),
                      "rerank": RerankConf(top=5, db_features=Path("db.h5"), model="fundamental", threshold=2.5,
                                           matcher="nn-ratio", matcher_overrides=("ratio_threshold=0.9",),
                                           min_inliers=7)}]
    calls = _stop(fake_pipeline, er, "evaluate_retrieval")
    _stopped(invoke("eval", "retrieval", "--gnd", "g.pkl", "--scores", "s.npy"))
    assert calls == [{"gnd_path": Path("g.pkl"), "ranks_path": None, "scores_path": Path("s.npy"),
                      "protocol": "revisited", "kappas": (1, 5, 10)}]
    calls = _stop(fake_pipeline, er, "evaluate_recall")
    _stopped(invoke("eval", "recall", "--pred", "p.npy", "--db-names", "d.txt", "--query-utm", "q.npy",
                    "--radius", 10, "--n", 1, "--n", 3))
    assert calls == [{"pred_path": Path("p.npy"), "db_utm_path": None, "query_utm_path": Path("q.npy"),
                      "db_names_path": Path("d.txt"), "query_names_path": None, "radius": 10.0, "ns": (1, 3)}]


def test_eval_localization_flags_reach_the_code(fake_pipeline):
    import visloc.eval.localization as el

    calls = _stop(fake_pipeline, el, "evaluate_localization")
    _stopped(invoke("eval", "localization", "--gt", "gt.txt", "--pred", "p.txt", "--log", "l.jsonl",
                    "--thresholds", "1,2;3,4"))
    assert calls == [{"gt_path": Path("gt.txt"), "pred_path": Path("p.txt"), "log_path": Path("l.jsonl"),
                      "thresholds": ((1.0, 2.0), (3.0, 4.0))}]


def test_eval_matching_commands_take_device_and_flags(fake_pipeline, tmp_path):
    import visloc.pipelines.evaluate as ev
    from visloc.eval.predictions import Method

    method = Method("sift", "nn-ratio", ("max_num_keypoints=64",), ("ratio_threshold=0.9",), 320)
    common = ["--extractor", "sift", "--matcher", "nn-ratio", "--set-extractor", "max_num_keypoints=64",
              "--set-matcher", "ratio_threshold=0.9", "--resize-max", 320, "--cache", tmp_path, "--device", "cuda:1"]
    calls = _stop(fake_pipeline, ev, "evaluate_homography")
    _stopped(invoke("eval", "homography", "--dataset", "graf", "--threshold", 2, "--seed", 4, *common))
    assert calls == [{"method": method, "dataset": "graf", "threshold": 2.0, "cache_dir": tmp_path,
                      "device": "cuda:1", "progress": True, "seed": 4}]
    calls = _stop(fake_pipeline, ev, "evaluate_pose")
    _stopped(invoke("eval", "pose", "--step", 3, *common))
    assert calls == [{"method": method, "dataset": "castle", "step": 3, "threshold": 1.0, "cache_dir": tmp_path,
                      "device": "cuda:1", "progress": True}]
    calls = _stop(fake_pipeline, ev, "evaluate_stereo")
    _stopped(invoke("eval", "stereo", *common))
    assert calls == [{"method": method, "cache_dir": tmp_path, "device": "cuda:1", "progress": True}]


# --- RerankConf ---------------------------------------------------------------------------------------


def test_rerank_conf_checks_its_values():
    from visloc.retrieval.rerank import RerankConf

    assert not RerankConf().enabled and RerankConf(top=2, db_features="db.h5").db_features == Path("db.h5")
    for kwargs, message in (({"top": -1}, "expected an integer >= 0"), ({"top": 2}, "--db-features"),
                            ({"model": "essential"}, "model: expected"), ({"threshold": 0.0}, "threshold"),
                            ({"min_inliers": -1}, "min_inliers")):
        with pytest.raises(ConfError, match=message):
            RerankConf(**kwargs)
