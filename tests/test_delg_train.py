"""The ``delg`` and ``delf`` recipes: split rule, crops, conf errors, both recipes and both DELF stages end to end,
resume, export, ImageNet initialisation, retrieval validation, and a short run that learns.

Data are synthetic landmarks (``train.delg.synthetic``: the class is a hue, texture and background are
nuisances) written into the run folder by ``prepare``, at 64 px on a ResNet-18 with tiny heads.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import torchvision

from visloc.conf import ConfError, apply_overrides
from visloc.data.gldv2_split import build_split, relabel, split_per_class
from visloc.data.world.revisited import write_gnd
from visloc.models.delg import DELG, DELGConf
from visloc.train.core import train
from visloc.train.delg import synthetic
from visloc.train.delg.data import (
    Augment,
    LandmarkImages,
    open_split,
    sample_crop,
)
from visloc.train.delg.module import schedule_lambda
from visloc.train.delg.recipe import DELFRecipe, DELGRecipe
from visloc.train.delg.validation import load_retrieval_set, load_scaled, retrieval_map
from visloc.train.recipe_base import recipe_conf
from visloc.weights.checkpoint import build_model, load_model_record
from visloc.weights.converters.resnet_imagenet import load_imagenet_backbone as load_backbone
from visloc.weights.load import WeightsError
from visloc.weights.records import DELG_RGB

DELG_RECIPE, DELF_RECIPE = DELGRecipe(), DELFRecipe()


class _Steps(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(glob.glob(str(run_dir / "tb" / "events*"))[0])
    ea.Reload()
    return {tag: [e.value for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


# ---------------------------------------------------------------- data


def test_split_rule_and_relabeling_on_a_constructed_case():
    labels = {"a0": 70}  # a class of one image: all of it to validation
    labels |= {f"b{i}": 30 for i in range(10)}  # 10 images: int(0.2 * 10) = 2 to validation
    labels |= {f"c{i}": 500 for i in range(5)}  # 5 images: int(0.2 * 5) = 1
    new, old = relabel(labels)
    assert old == [30, 70, 500] and new["a0"] == 1 and new["b3"] == 0 and new["c4"] == 2
    train_ids, val_ids = split_per_class(labels, 0.2, seed=0)
    assert sorted(val_ids + train_ids) == sorted(labels)
    per = {p: (sum(i.startswith(p) for i in train_ids), sum(i.startswith(p) for i in val_ids)) for p in "abc"}
    assert per == {"a": (0, 1), "b": (8, 2), "c": (4, 1)}
    assert split_per_class(labels, 0.2, seed=0) == (train_ids, val_ids)  # deterministic per seed
    others = [split_per_class(labels, 0.2, seed=s)[1] for s in range(1, 6)]
    assert any(o != val_ids for o in others)
    assert split_per_class(labels, 0.0, seed=0)[1] == []
    split = build_split(labels, 0.2, seed=0)
    assert split.num_classes == 3 and ("a0", 1) in split.val and len(split.train) == 12


def test_random_crop_follows_the_ranges_and_falls_back_to_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y, x, h, w = sample_crop(rng, 480, 640, (0.08, 1.0), (3 / 4, 4 / 3), 0.1)
        assert 0 <= y and y + h <= 480 and 0 <= x and x + w <= 640
        assert 0.1 * 480 * 640 <= h * w <= 480 * 640
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # an aspect of 2..3 cannot cover 99 % of a square: TF's fallback is the whole image
    assert sample_crop(rng, 100, 100, (0.99, 1.0), (2.0, 3.0), 0.1) == (0, 0, 100, 100)


def test_images_read_from_tars_as_from_the_extracted_tree(tmp_path):
    from visloc.data.world import gldv2_layout as gl

    root = synthetic.write_gldv2(tmp_path / "gld", classes=2, images_per_class=3, size=40)
    layout, split = open_split(str(root), True, 0.2, 0)
    extracted = LandmarkImages(layout, split.train, 32, DELG_RGB)
    before = [extracted[i]["image"] for i in range(len(extracted))]
    ids = [i for i, _ in split.train + split.val]
    gl.pack_images(root, ids, images_per_tar=4)
    for i in ids:
        (root / gl.image_relpath(i)).unlink()
    packed_layout, packed_split = open_split(str(root), True, 0.2, 0, True)  # md5 checked
    assert packed_split == split
    packed = LandmarkImages(packed_layout, packed_split.train, 32, DELG_RGB)
    assert all(torch.equal(packed[i]["image"], before[i]) for i in range(len(packed)))
    assert before[0].shape == (3, 32, 32) and packed[0]["label"] == split.train[0][1]
    # augmentation: drawn per (seed, epoch, index), so repeatable and different in the next epoch
    aug = LandmarkImages(packed_layout, packed_split.train, 32, DELG_RGB, Augment(flip=True, color_jitter=0.3))
    assert torch.equal(aug[1]["image"], aug[1]["image"]) and not torch.equal(aug[1]["image"], before[1])
    first = aug[1]["image"]
    aug.set_epoch(1)
    assert not torch.equal(aug[1]["image"], first)


# ---------------------------------------------------------------- confs


def test_conf_errors_are_one_line_and_name_the_field(tmp_path):
    cases = [
        ("delf", ["stage=attn"], "stage_init: stage attn starts from a tuning run's export"),
        ("delg", ["model.preset=delg-r7"], "model.preset: unknown 'delg-r7'; known: delg-r50"),
        ("delg", ["model.preset=delf-r50"], "model: the delg recipe needs a global head"),
        ("delf", ["model.preset=delg-r50"], "model: the delf recipe trains DELF"),
        ("delf", ["stage=tuning", "stage_init=x.pt"], "stage_init: only stage attn"),
        ("delg", ["model.imagenet=r50.pth"], "model.imagenet: a torchvision .pth fits the torchvision layout"),
        ("delg", ["data.area_range=[0.5,0.1]"], r"data.area_range: expected \[min, max\]"),
        ("delg", ["arcface.margin=2.0"], r"arcface.margin: expected radians in \[0, pi/2\)"),
        ("delg", ["val.retrieval_size=8"], "val.retrieval_size: expected >= 32"),
        ("delg", ["data.root=''"], "data.root: the GLDv2 train folder"),
        ("delf", ["stage=attn", f"stage_init={tmp_path}/tuning/delf_tuning.pt", f"run_dir={tmp_path}/tuning"],
         "run_dir: .* holds the tuning run; give stage attn its own run_dir"),
    ]
    for name, overrides, message in cases:
        with pytest.raises(ConfError, match=message) as err:
            recipe_conf(name, [f"data.root={tmp_path}", *overrides])
        assert "\n" not in str(err.value)


def test_schedule_is_warmup_times_linear_decay():
    f = schedule_lambda(2, 10)
    assert [f(s) for s in (0, 1, 2, 5, 10, 12)] == [0.5, 0.9, 0.8, 0.5, 0.0, 0.0]
    assert schedule_lambda(0, 10, linear=False)(9) == 1.0


# ---------------------------------------------------------------- end to end


def test_delg_trains_resumes_and_exports(tmp_path):
    run = tmp_path / "run"
    conf = DELG_RECIPE.tiny_conf(run)
    first = train(DELG_RECIPE, conf, progress=False)
    assert first.global_step == 3 and first.exported == run / "delg.pt"
    # relabeling.csv: the synthetic landmark ids 0, 10, 20 -> 0, 1, 2
    with open(run / "relabeling.csv", newline="") as f:
        assert list(csv.reader(f)) == [["new_label", "old_label"], ["0", "0"], ["1", "10"], ["2", "20"]]
    # the export: weights_only, model delg, the network without classifiers
    raw = torch.load(first.exported, map_location="cpu", weights_only=True)
    assert not any(k.startswith(("arcface", "attention_classifier")) for k in raw["state_dict"])
    record = load_model_record(first.exported, "delg")
    assert record.extras == {"normalisation": "delg"}  # what the extractors read back
    model = build_model(record, DELGConf, DELG)
    assert model.conf == conf.model.resolved
    trained = first.module.model.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in model.state_dict().items())
    scalars = _scalars(run)
    for tag in ("train/total", "train/global", "train/attention", "train/reconstruction", "train/accuracy_global",
                "train/accuracy_attention", "val/accuracy_global", "val/accuracy_attention", "val/map_medium"):
        assert tag in scalars, tag
    assert len(scalars["val/map_medium"]) == 3  # at start, step 2, after the last step
    # resume from last.ckpt to twice the steps
    steps = _Steps()
    second = train(DELG_RECIPE, apply_overrides(conf, {"train": {"max_steps": 6}}), progress=False, callbacks=[steps])
    assert second.resumed_from == run / "checkpoints" / "last.ckpt"
    assert steps.steps == [3, 4, 5] and second.global_step == 6


def test_delf_tuning_then_attention_on_frozen_features(tmp_path):
    tuning = train(DELF_RECIPE, DELF_RECIPE.tiny_conf(tmp_path / "tuning"), progress=False)
    assert tuning.exported == tmp_path / "tuning" / "delf_tuning.pt"
    module = tuning.module
    assert not any(p.requires_grad for p in module.model.attention.parameters())
    assert not any(p.requires_grad for p in module.model.backbone.layer4.parameters())
    assert "train/accuracy_classifier" in _scalars(tmp_path / "tuning")

    attn_conf = apply_overrides(DELF_RECIPE.tiny_conf(tmp_path / "attn"), {
        "stage": "attn", "stage_init": str(tuning.exported), "data": {"root": str(tmp_path / "tuning" / "landmarks")},
        "val": {"retrieval_root": str(tmp_path / "tuning" / "retrieval")}})
    attn = train(DELF_RECIPE, DELF_RECIPE.check(attn_conf), progress=False)
    assert attn.exported == tmp_path / "attn" / "delf_attn.pt"
    before = build_model(load_model_record(tuning.exported, "delg"), DELGConf, DELG).state_dict()
    after = build_model(load_model_record(attn.exported, "delg"), DELGConf, DELG).state_dict()
    # the backbone, BatchNorm statistics included, is the tuning run's; the attention head trained
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("attention."))
    assert not attn.module.model.backbone.training and attn.module.model.attention.training
    assert "train/accuracy_attention" in _scalars(tmp_path / "attn")


@pytest.mark.parametrize("layout_ok", [True, False])
def test_imagenet_backbone_from_a_torchvision_state_dict(tmp_path, layout_ok):
    arch = DELGConf(18, "torchvision", 16, 8, 32)
    net = torchvision.models.resnet18(weights=None) if layout_ok else torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), path)
    model = DELG(arch)
    if not layout_ok:
        with pytest.raises(WeightsError, match=r"resnet.pth: torchvision ResNet weights hold layer1.2.conv1.weight, "
                                               r"which the backbone has not \(another depth\?\)$") as err:
            load_backbone(model, str(path))
        assert "\n" not in str(err.value)
        return
    assert load_backbone(model, str(path)) == "torchvision"
    assert torch.equal(model.backbone.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    h5 = tmp_path / "resnet50_notop.h5"
    h5.write_bytes(b"")
    with pytest.raises(ConfError, match=r"^model.imagenet: Keras ImageNet weights exist for ResNet-50 / 101, the "
                                        r"model is ResNet-18$"):
        DELG_RECIPE.check(apply_overrides(DELG_RECIPE.tiny_conf(tmp_path / "run"), {"model": {"imagenet": str(h5)}}))
    conf = apply_overrides(DELG_RECIPE.tiny_conf(tmp_path / "run"), {"model": {"imagenet": str(path)}})
    assert conf.model.preprocessing.mean == (0.485, 0.456, 0.406)  # auto: torchvision's normalisation
    module = DELG_RECIPE.module(DELG_RECIPE.check(conf), tmp_path / "run")
    assert torch.equal(module.model.backbone.conv1.weight, net.conv1.weight)


# ---------------------------------------------------------------- retrieval validation


def _solid_set(root: Path) -> None:
    """Two colours, 3 database images each, one query per colour (box inside the image)."""
    colours = [(200, 30, 30), (30, 30, 200)]
    imlist, gnd = [], []
    for c, rgb in enumerate(colours):
        for k in range(3):
            imlist.append(f"d{c}{k}")
            img = np.full((60, 80, 3), rgb, np.uint8)
            (root / "jpg").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "jpg" / f"d{c}{k}.jpg"), img[..., ::-1])
        cv2.imwrite(str(root / "jpg" / f"q{c}.jpg"), np.full((60, 80, 3), rgb, np.uint8)[..., ::-1])
    for c in range(2):
        gnd.append({"bbx": [10.0, 10.0, 50.0, 30.0], "easy": [3 * c, 3 * c + 1], "hard": [3 * c + 2], "junk": []})
    write_gnd(root / "gnd_solid.pkl", imlist, ["q0", "q1"], gnd)


def test_retrieval_validation_crops_queries_and_scores_exactly(tmp_path):
    _solid_set(tmp_path)
    # a 80x60 image at longest side 40 is scaled by 0.5; the 40x20 box becomes 20x10
    assert load_scaled(tmp_path / "jpg" / "q0.jpg", 40).shape == (30, 40, 3)
    assert load_scaled(tmp_path / "jpg" / "q0.jpg", 40, np.array([10.0, 10.0, 50.0, 30.0])).shape == (10, 20, 3)
    rset = load_retrieval_set(tmp_path)
    assert len(rset.database) == 6 and rset.revisited

    def mean_colour(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.mean(dim=(-2, -1)) + 2.0, dim=-1)

    maps = retrieval_map(mean_colour, rset, 40, DELG_RGB, batch_size=4)
    assert maps == {"map_easy": 1.0, "map_medium": 1.0, "map_hard": 1.0}
    # one query: its 3 labelled images are kept whatever max_database, the others fill up to it
    small = load_retrieval_set(tmp_path, max_queries=1, max_database=4)
    assert small.database == ("d00", "d01", "d02", "d10") and len(small.queries) == 1
    assert small.gnd[0]["easy"].tolist() == [0, 1] and small.gnd[0]["hard"].tolist() == [2]


# ---------------------------------------------------------------- learning


def test_a_short_run_learns(tmp_path):
    """45 SGD steps on 4 synthetic classes: the loss falls, validation accuracy and mAP beat the untrained model.

    (12 validation images: at 30 steps the gain depends on the sample order's seed, 0.33-0.5 in accuracy.)
    """
    conf = apply_overrides(DELG_RECIPE.tiny_conf(tmp_path / "run"), {
        "generate": {"classes": 4, "images_per_class": 15, "database_per_class": 4, "queries_per_class": 2},
        "val": {"every": 45}, "train": {"max_steps": 45, "batch_size": 8, "checkpoint_every": 100}})
    result = train(DELG_RECIPE, conf, progress=False)
    start, end = result.module.val_history[0], result.module.val_history[-1]
    assert start["step"] == 0 and end["step"] == 45
    assert end["accuracy_global"] >= start["accuracy_global"] + 0.4, (start, end)
    assert end["map_medium"] > start["map_medium"], (start, end)  # 8 queries: +0.02 to +0.2 across order seeds
    s = _scalars(tmp_path / "run")
    for tag, margin in (("train/global", 0.5), ("train/total", 1.0)):
        assert np.mean(s[tag][-5:]) < np.mean(s[tag][:5]) - margin, (tag, s[tag])
