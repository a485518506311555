"""``visloc train`` and ``visloc data bdd``: arguments reach the code, user errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from visloc.cli import app

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_train_dry_run_prints_conf_and_cache_estimate():
    res = runner.invoke(app, ["train", str(CONFIGS / "hfnet_distill.yaml"), "train.max_steps=2000", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "recipe: hfnet-distill" in res.output and "max_steps: 2000" in res.output
    assert "recipe hfnet-distill: 2000 steps of batch 32 -> outputs/train/hfnet_distill" in res.output
    # 640x480: 128 x 60 x 80 fp16 + 4800 cells x top-4 x 3 B + 4096 x 2 B + 512 keypoints x 8 B
    assert "about 1.299 MB per image at 640x480 (HF-Net's export: 6.16 MB" in res.output


def test_train_overrides_reach_the_recipe(monkeypatch, tmp_path):
    import visloc.train.core as core

    seen = {}

    class Result:
        global_step, resumed_from, exported, global_rank = 7, None, tmp_path / "student.pt", 0

    def fake_train(recipe, conf, progress=True, callbacks=()):
        seen["recipe"], seen["conf"] = recipe, conf
        return Result()

    monkeypatch.setattr(core, "train", fake_train)
    res = runner.invoke(
        app,
        [
            "train",
            str(CONFIGS / "hfnet_default_student.yaml"),
            "train.max_steps=5",
            f"run_dir={tmp_path}",
            "data.homographic=false",
        ],
    )
    assert res.exit_code == 0, res.output
    conf = seen["conf"]
    assert seen["recipe"].name == "hfnet-distill"
    assert conf.train.max_steps == 5 and conf.run_dir == str(tmp_path) and not conf.data.homographic
    assert conf.data.builtin and conf.student.model.descriptor_dim == 128
    assert f"train: 7 steps -> {tmp_path / 'student.pt'}" in res.output


def test_train_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["train", str(CONFIGS / "hfnet_distill.yaml"), "train.max_stepz=3"])
    assert res.exit_code == 2 and "unknown key(s) ['max_stepz']" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output
    no_recipe = tmp_path / "plain.yaml"
    no_recipe.write_text("run_dir: x\ntrain: {max_steps: 3}\n")
    res = runner.invoke(app, ["train", str(no_recipe)])
    assert res.exit_code == 2
    assert (f"{no_recipe}: no top-level 'recipe:' key naming the recipe (known: delf, delg, event-vpr, "
            "hfnet-distill") in res.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("recipe: nope\n")
    res = runner.invoke(app, ["train", str(unknown)])
    assert res.exit_code == 2 and "unknown recipe 'nope'; known: delf, delg, event-vpr, hfnet-distill" in res.output


def test_data_bdd(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for n in ("a.jpg", "b.jpg"):
        Image.fromarray((np.random.default_rng(0).random((40, 80, 3)) * 255).astype(np.uint8)).save(images / n)
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps(
            [
                {"name": "a.jpg", "attributes": {"timeofday": "night"}},
                {"name": "b.jpg", "attributes": {"timeofday": "daytime"}},
            ]
        )
    )
    res = runner.invoke(
        app,
        [
            "data",
            "bdd",
            "--labels",
            str(labels),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "out"),
            "--time",
            "daytime",
            "--size",
            "40",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "bdd: 1 new, 0 already done, 0 skipped" in res.output
    assert Image.open(tmp_path / "out" / "b.jpg").size == (40, 20) and not (tmp_path / "out" / "a.jpg").exists()
    res = runner.invoke(
        app,
        ["data", "bdd", "--labels", str(tmp_path / "x.json"), "--images", str(images), "--out", str(tmp_path / "out")],
    )
    assert res.exit_code == 2 and "label file not found" in res.output
