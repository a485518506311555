"""The ``visloc`` command: every command answers --help, and each flag reaches the code."""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from visloc.cli import app
from visloc.features import EXTRACTORS
from visloc.geometry import ESTIMATORS
from visloc.io import features_h5, matches_h5
from visloc.io.pairs import read_pairs
from visloc.matching import MATCHERS

runner = CliRunner()


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, cmd in group.commands.items():
        paths.append((*prefix, name))
        if getattr(cmd, "commands", None) is not None:  # a group (typer may vendor its own click)
            paths += _command_paths(cmd, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_every_command_is_found():
    assert {("extract",), ("list",), ("match",), ("match-features",), ("pairs", "exhaustive"),
            ("pairs", "sequential"), ("eval", "homography")} <= set(COMMANDS)


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "visloc")
def test_help(path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_list_shows_every_registered_name():
    result = invoke("list")
    assert result.exit_code == 0
    for reg in (EXTRACTORS, MATCHERS, ESTIMATORS):
        for name in reg.names():
            assert f"  {name} " in result.output


@pytest.fixture(scope="module")
def cli_features(photo_dir, tmp_path_factory):
    """SIFT features of the photo folder, written by the CLI."""
    out = tmp_path_factory.mktemp("cli") / "feats.h5"
    result = invoke("extract", photo_dir, "--out", out, "--conf", "sift")
    assert result.exit_code == 0, result.output
    return out


def test_extract_set_reaches_the_code(photo_dir, cli_features, photo_names, tmp_path):
    out = tmp_path / "f.h5"
    result = invoke("extract", photo_dir, "--out", out, "--conf", "sift", "--set", "max_num_keypoints=100")
    assert result.exit_code == 0, result.output
    assert f"extract: {len(photo_names)} new" in result.output
    counts = [len(features_h5.read_features(out, n)["keypoints"]) for n in photo_names]
    defaults = [len(features_h5.read_features(cli_features, n)["keypoints"]) for n in photo_names]
    assert max(counts) == 100 and min(defaults) > 100
    assert json.loads(features_h5.read_attrs(out)["visloc_extractor"])["conf"]["max_num_keypoints"] == 100


def test_extract_as_half(photo_dir, cli_features, tmp_path):
    out = tmp_path / "f.h5"
    result = invoke("extract", photo_dir, "--out", out, "--conf", "sift", "--as-half")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as fd, h5py.File(cli_features, "r") as ref:
        assert fd["coffee.jpg/descriptors"].dtype == np.float16
        assert ref["coffee.jpg/descriptors"].dtype == np.float32


def test_extract_image_list_and_overwrite(photo_dir, cli_features, tmp_path):
    names = tmp_path / "list.txt"
    names.write_text("coffee.jpg\n\n")
    out = tmp_path / "f.h5"
    assert invoke("extract", photo_dir, "--out", out, "--conf", "sift", "--image-list", names).exit_code == 0
    assert features_h5.list_feature_names(out) == ["coffee.jpg"]
    conflict = invoke("extract", photo_dir, "--out", out, "--conf", "orb")
    assert conflict.exit_code == 2 and "another extractor" in conflict.stderr
    result = invoke("extract", photo_dir, "--out", out, "--conf", "orb", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads(features_h5.read_attrs(out)["visloc_extractor"])["name"] == "orb"


def test_extract_errors(photo_dir, tmp_path):
    result = invoke("extract", photo_dir, "--out", tmp_path / "f.h5", "--conf", "nope")
    assert result.exit_code == 2
    assert "unknown extractor" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("extract", photo_dir, "--out", tmp_path / "f.h5", "--conf", "sift", "--set", "max_kp=3")
    assert result.exit_code == 2 and "unknown key" in result.stderr
    result = invoke("extract", photo_dir, "--out", tmp_path / "f.h5", "--image-list", tmp_path / "no.txt")
    assert result.exit_code == 2 and "image list file not found" in result.stderr
    assert not (tmp_path / "f.h5").exists()


def test_extract_nothing_extractable_exits_1(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "bad.jpg").write_text("not an image")
    result = invoke("extract", tmp_path / "im", "--out", tmp_path / "f.h5", "--conf", "sift")
    assert result.exit_code == 1
    assert "skipped bad.jpg: not an image" in result.output


def test_pairs(photo_dir, cli_features, photo_names, tmp_path):
    out = tmp_path / "p.txt"
    result = invoke("pairs", "exhaustive", "--out", out, "--images", photo_dir)
    assert result.exit_code == 0 and "3 pairs" in result.output
    assert read_pairs(out) == [(photo_names[0], photo_names[1]), (photo_names[0], photo_names[2]),
                               (photo_names[1], photo_names[2])]
    result = invoke("pairs", "sequential", "--out", out, "--images", photo_dir, "--window", 1)
    assert result.exit_code == 0, result.output
    assert read_pairs(out) == [(photo_names[0], photo_names[1]), (photo_names[1], photo_names[2])]
    result = invoke("pairs", "sequential", "--out", out, "--features", cli_features, "--window", 1, "--loop")
    assert read_pairs(out) == [(photo_names[0], photo_names[1]), (photo_names[1], photo_names[2]),
                               (photo_names[2], photo_names[0])]
    assert invoke("pairs", "exhaustive", "--out", out).exit_code == 2
    assert invoke("pairs", "sequential", "--out", out, "--images", photo_dir, "--window", 0).exit_code == 2


def _total_matches(path, pairs) -> int:
    return sum(len(matches_h5.read_matches(path, a, b)[0]) for a, b in read_pairs(pairs))


def test_match_features_set_reaches_the_code(photo_dir, cli_features, tmp_path):
    pairs = tmp_path / "p.txt"
    assert invoke("pairs", "exhaustive", "--out", pairs, "--images", photo_dir).exit_code == 0
    totals = {}
    for ratio in (0.5, 0.9):
        out = tmp_path / f"m{ratio}.h5"
        result = invoke("match-features", "--pairs", pairs, "--features", cli_features, "--out", out,
                        "--conf", "nn-ratio", "--set", f"ratio_threshold={ratio}")
        assert result.exit_code == 0, result.output
        assert "match: 3 new" in result.output
        record = json.loads(features_h5.read_attrs(out)["visloc_matcher"])
        assert record["conf"]["ratio_threshold"] == ratio
        totals[ratio] = _total_matches(out, pairs)
    assert totals[0.5] < totals[0.9]
    result = invoke("match-features", "--pairs", pairs, "--features", cli_features, "--out", tmp_path / "lg.h5")
    assert result.exit_code == 2 and "lightglue: no pretrained weights for sift-128 descriptors" in result.stderr


def test_match_graf(graf_pair, tmp_path):
    pic = tmp_path / "pic.png"
    result = invoke("match", graf_pair.path0, graf_pair.path1, "--extractor", "sift", "--matcher", "nn-ratio",
                    "--model", "homography", "--out", pic)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "homography inliers:" in ln)
    assert int(line.rsplit(":", 1)[1]) > 100
    assert f"picture -> {pic}" in result.output and pic.is_file()


def test_match_essential_needs_intrinsics(graf_pair):
    result = invoke("match", graf_pair.path0, graf_pair.path1, "--extractor", "sift", "--model", "essential")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --model essential needs --intrinsics fx,fy,cx,cy"
    result = invoke("match", graf_pair.path0, graf_pair.path1, "--model", "essential", "--intrinsics", "1,2,3")
    assert result.exit_code == 2 and "--intrinsics: expected fx,fy,cx,cy" in result.stderr


def test_match_unknown_extractor(graf_pair):
    result = invoke("match", graf_pair.path0, graf_pair.path1, "--extractor", "nope")
    assert result.exit_code == 2
    assert "unknown extractor 'nope'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_homography_graf_and_cache(graf_pair, tmp_path):
    cache, report = tmp_path / "cache", tmp_path / "report.json"
    args = ("eval", "homography", "--dataset", "graf", "--extractor", "sift", "--matcher", "nn-ratio",
            "--cache", cache, "--out", report)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert {"auc@1.0", "auc@3.0", "auc@5.0"} <= set(data["summary"])
    assert data["summary"]["auc@5.0"] > 0
    assert data["extractor"]["name"] == "sift" and data["matcher"]["conf"]["ratio_threshold"] == 0.8
    [cache_file] = cache.rglob("*.h5")
    mtime = cache_file.stat().st_mtime_ns
    report.unlink()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert cache_file.stat().st_mtime_ns == mtime
    assert json.loads(report.read_text())["summary"] == data["summary"]


def test_eval_homography_unknown_dataset():
    result = invoke("eval", "homography", "--dataset", "nope")
    assert result.exit_code == 2 and "--dataset" in result.stderr


CONFIGS = sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from visloc.conf import load_yaml

    data = load_yaml(path)
    if "recipe" in data:  # training recipes, whichever the recipe
        from visloc.train.recipe_base import load_recipe_conf

        name, conf = load_recipe_conf(path)
        assert name == data["recipe"] and conf.train.max_steps > 0
        return
    if path.name.startswith("scene_"):  # the built-in scene
        from visloc.data.scene.config import SceneConf, load_scene_conf

        assert load_scene_conf(path) == SceneConf()
        return
    if path.name.startswith("demo_"):  # the demo's world in the city
        from visloc.data.scene.city_scene import CitySceneConf, load_city_scene_conf

        assert load_city_scene_conf(path) == CitySceneConf()
        return
    registry = EXTRACTORS if data["name"] in EXTRACTORS else MATCHERS
    conf = registry.conf(data["name"], data.get("conf") or {})
    for key, value in (data.get("conf") or {}).items():
        assert getattr(conf, key) == value


def test_extract_conf_from_yaml_and_set_wins(photo_dir, tmp_path):
    yaml_path = tmp_path / "sift.yaml"
    yaml_path.write_text("name: rootsift\nconf:\n  max_num_keypoints: 80\n  resize_max: 512\n")
    out = tmp_path / "f.h5"
    result = invoke("extract", str(photo_dir), "--conf", str(yaml_path), "--set", "max_num_keypoints=30",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(features_h5.read_attrs(out)["visloc_extractor"])
    assert record["name"] == "rootsift"
    assert record["conf"]["max_num_keypoints"] == 30 and record["conf"]["resize_max"] == 512
    bad = tmp_path / "bad.yaml"
    bad.write_text("nme: sift\n")
    result = invoke("extract", str(photo_dir), "--conf", str(bad), "--out", str(tmp_path / "g.h5"))
    assert result.exit_code == 2 and "bad.yaml" in result.output


def test_consolidate_makes_the_file_listable_by_visititems(photo_dir, tmp_path):
    import h5py

    from visloc.io import features_h5

    out = tmp_path / "f.h5"
    assert runner.invoke(app, ["extract", str(photo_dir), "--out", str(out), "--conf", "sift",
                               "--set", "max_num_keypoints=50"]).exit_code == 0

    def listed() -> list[str]:
        names: list[str] = []
        with h5py.File(out, "r") as fd:  # what hloc's list_h5_names does
            fd.visititems(lambda k, o: names.append(k) if isinstance(o, h5py.Group) and "keypoints" in o else None)
        return sorted(names)

    expected = features_h5.list_feature_names(out)
    assert len(expected) == 3 and listed() == []  # external links are not visited
    result = runner.invoke(app, ["consolidate", str(out)])
    assert result.exit_code == 0 and f"consolidated {out}" in result.output
    assert listed() == expected and not (tmp_path / "f.h5.shards").exists()
    missing = runner.invoke(app, ["consolidate", str(tmp_path / "none.h5")])
    assert missing.exit_code == 2 and "none.h5: file not found" in missing.stderr
