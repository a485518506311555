"""The ``loftr-coarse`` recipe: conf checks, schedule, validation metrics, resume, accumulation, teachers, export.

A tiny world (4 training pairs and 1 validation pair at 256x192, trained at 128x96) is generated once per
module; the learning run (8 pairs at 320x240) and the two-process DDP run are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from visloc.conf import ConfError, apply_overrides
from visloc.models.coarse_loftr import PRESETS, CoarseLoFTR, CoarseMatchConf
from visloc.train.core import train
from visloc.train.loftr.conf import LoFTRCoarseTrainConf, check_conf
from visloc.train.loftr.distill import subsample_sim
from visloc.train.loftr.module import CoarseLoFTRModule, schedule_lambda
from visloc.train.loftr.recipe import LoFTRCoarse, generate_world
from visloc.train.loftr.validation import evaluate, match_counts

SRC = Path(__file__).resolve().parents[1] / "src"
RECIPE = LoFTRCoarse()


def _conf(run_dir: Path, root: Path, **sections) -> LoFTRCoarseTrainConf:
    base = {
        "run_dir": str(run_dir),
        "data": {"root": str(root / "pairs_{split}"), "size": [128, 96]},
        "val": {"every": 0},
        "train": {"max_steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 100, "threads": 1,
                  "lr": 1e-3, "accelerator": "cpu"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return RECIPE.check(apply_overrides(LoFTRCoarseTrainConf(), base))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """4 train pairs and 1 val pair at 256x192 (``generate_world``), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("loftr_world")
    conf = _conf(root / "unused", root, generate={"train_pairs": 4, "val_pairs": 1, "width": 256, "height": 192})
    generate_world(conf)
    return root


def test_conf_checks_name_the_field():
    good = LoFTRCoarseTrainConf()
    assert check_conf(good) is good and good.model.resolved == PRESETS["s"]
    cases = [
        ({"data": {"resolution": 8}}, "data.resolution: 8 but the model's resolution is 16"),
        ({"distill": {"teacher": "loftr"}}, "distill.path: the loftr teacher needs"),
        ({"schedule": {"lr_steps": [20, 10]}}, r"schedule.lr_steps: increasing"),
        ({"schedule": {"lr_gamma": 0.0}}, r"schedule.lr_gamma: must be in \(0, 1\]"),
        ({"loss": {"alpha": 0.0}}, r"loss.alpha: must be in \(0, 1\]"),
        ({"loss": {"type": "l2"}}, "loss.type: 'l2' is not one of"),
        ({"val": {"ransac_px": 0.0}}, "val.ransac_px: must be > 0"),
        ({"model": {"preset": "xl"}}, "model.preset: unknown 'xl'; known: s, m"),
        ({"distill": {"temperature": -1.0}}, "distill.temperature: must be > 0"),
        ({"train": {"max_steps": 0}}, "train.max_steps: must be >= 1"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfError, match=message):
            check_conf(apply_overrides(good, overrides))


def test_schedule_is_warmup_times_step_decay():
    f = schedule_lambda(4, (10, 20), 0.5)
    assert [f(s) for s in (0, 1, 3, 9, 10, 19, 20, 100)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert schedule_lambda(0, (), 0.5)(1000) == 1.0


def test_gradient_clipping_hook_uses_the_recipe_value(tmp_path):
    module = CoarseLoFTRModule(LoFTRCoarseTrainConf())
    calls = []
    module.clip_gradients = lambda opt, gradient_clip_val, gradient_clip_algorithm: calls.append(
        (gradient_clip_val, gradient_clip_algorithm))
    module.configure_gradient_clipping(None)
    assert calls == [(0.5, "norm")]  # LoFTR's 0.5, although the Trainer has no gradient_clip_val
    off = CoarseLoFTRModule(apply_overrides(LoFTRCoarseTrainConf(), {"schedule": {"grad_clip": 0.0}}))
    off.clip_gradients = module.clip_gradients
    off.configure_gradient_clipping(None)
    assert len(calls) == 1


class _Fixed(nn.Module):
    """A stand-in model whose confidences are 0.9 on the given cell pairs (``matches0``), 0 elsewhere."""

    def __init__(self, matches0: torch.Tensor, S: int) -> None:
        super().__init__()
        self.conf = SimpleNamespace(resolution=16)
        self.matches0, self.S = matches0, S

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return h // 16, w // 16

    def forward(self, image0, image1):
        conf = torch.zeros(1, len(self.matches0), self.S)
        rows = torch.nonzero(self.matches0 >= 0)[:, 0]
        conf[0, rows, self.matches0[rows]] = 0.9
        return {"conf": conf}


def _shift(h: int, w: int, dx: int) -> torch.Tensor:
    """``matches0`` of the shift by ``dx`` columns on an ``h x w`` grid (-1 where it leaves the grid)."""
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.where(c + dx < w, r * w + c + dx, torch.full_like(r, -1)).reshape(-1)


def test_validation_precision_and_recall_exact():
    assert match_counts(torch.tensor([0, 1, 2]), torch.tensor([5, 7, 3]), torch.tensor([5, 6, -1]), 4) == (3, 1, 2)
    h, w = 6, 8  # 96 x 128 images
    gt = _shift(h, w, 1)
    gt[2 * w + 2] = -1  # cell (2, 2) has no ground truth: a prediction there counts as wrong
    K = torch.tensor([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    T = torch.eye(4)
    T[0, 3] = 1.0
    batch = {"image0": torch.zeros(1, 1, 96, 128), "image1": torch.zeros(1, 1, 96, 128), "matches0": gt[None],
             "K0": K[None], "K1": K[None], "T_0to1": T[None]}
    mconf = CoarseMatchConf(threshold=0.2, border=2)
    same = evaluate(_Fixed(_shift(h, w, 1), h * w), [batch], mconf, 4.0)
    # inner cells: rows 2..3, columns 2..5; the shift keeps columns 2..4 inside: 6 predictions, 5 with GT
    assert same["num_matches"] == 6 and same["precision"] == pytest.approx(5 / 6)
    assert same["precision@1"] == pytest.approx(5 / 6) and same["recall"] == 1.0
    assert set(same) >= {"auc@5", "auc@10", "auc@20"} and 0 <= same["auc@20"] <= 1
    off = evaluate(_Fixed(_shift(h, w, 2), h * w), [batch], mconf, 4.0)
    # one cell to the right of the truth: 4 inner predictions (columns 2..3), none exact, 3 within one cell
    assert off["num_matches"] == 4 and off["precision"] == 0.0
    assert off["precision@1"] == pytest.approx(3 / 4) and off["recall"] == 0.0


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_resume_continues_the_step_and_matches_a_straight_run(world, tmp_path):
    # batch 4 of the 4 pairs: every step sees the same pairs, so the runs can agree to rounding
    def conf(name: str, steps: int) -> LoFTRCoarseTrainConf:
        return _conf(tmp_path / name, world, train={"max_steps": steps, "batch_size": 4})

    straight = train(RECIPE, conf("a", 4), progress=False)
    assert straight.module.trainer.train_dataloader.dataset.epoch == 3  # one step per epoch: set_epoch ran
    first = train(RECIPE, conf("b", 2), progress=False)
    assert first.global_step == 2 and first.resumed_from is None
    second = train(RECIPE, conf("b", 4), progress=False)
    assert second.resumed_from == tmp_path / "b" / "checkpoints" / "last.ckpt" and second.global_step == 4
    a, b = _state(straight.module), _state(second.module)
    # the same 4 steps (data order within a batch aside): optimiser, schedule and augmentation epoch resumed
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert not torch.equal(_state(first.module)["loftr_coarse.layers.0.q_proj.weight"],
                           b["loftr_coarse.layers.0.q_proj.weight"])


def test_accumulation_averages_the_micro_batches(world, tmp_path):
    conf = _conf(tmp_path / "run", world, data={"augment": False},
                 train={"max_steps": 1, "batch_size": 1, "accumulate_grad_batches": 4, "weight_decay": 0.01})
    torch.manual_seed(conf.train.seed)  # train() seeds the same way before it builds the module
    ref = RECIPE.module(conf, tmp_path)
    init = {k: v.detach().clone() for k, v in ref.model.named_parameters()}
    result = train(RECIPE, conf, progress=False)
    assert result.global_step == 1
    # by hand: the mean of the 4 single-pair gradients (one epoch), clipped at 0.5, one AdamW step. Adam's
    # first step is about lr * sign(gradient): this checks that all four micro-batches make the one update
    opt = torch.optim.AdamW(ref.model.parameters(), lr=conf.train.lr, weight_decay=0.01)
    ds = RECIPE.train_dataset(conf, augment=False)
    for i in range(len(ds)):
        item = ds[i]
        batch = {k: item[k][None] for k in ("image0", "image1", "matches0")}
        (ref.losses(batch)["total"] / 4).backward()
    torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 0.5)
    opt.step()
    # parameters only: BatchNorm's running statistics depend on the (shuffled) order of the micro-batches
    got, want = dict(result.module.model.named_parameters()), dict(ref.model.named_parameters())
    assert all(not torch.equal(want[k], init[k]) for k in want)
    for k in want:
        assert torch.allclose(got[k].detach(), want[k].detach(), atol=1e-5), k  # first updates are +-1e-3


def test_loftr_teacher_checkpoint_distills_on_the_student_grid(tmp_path):
    torch.manual_seed(0)
    teacher = CoarseLoFTR(PRESETS["loftr-outdoor"]).eval()
    sd = {f"matcher.{k}": v for k, v in teacher.state_dict().items()}
    sd["matcher.loftr_fine.layers.0.q_proj.weight"] = torch.zeros(2, 2)  # fine-level keys are ignored
    sd["matcher.backbone.layer2_outconv.weight"] = torch.zeros(2, 2, 1, 1)
    path = tmp_path / "outdoor_ds.ckpt"
    torch.save({"epoch": 3, "state_dict": sd}, path)
    conf = apply_overrides(LoFTRCoarseTrainConf(), {"distill": {"teacher": "loftr", "path": str(path)},
                                                     "val": {"every": 0}})
    module = CoarseLoFTRModule(check_conf(conf))
    module.setup("fit")
    assert module.teacher is not None and not any(p.requires_grad for p in module.teacher.parameters())
    images = torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        expected = subsample_sim(teacher(*images)["sim"], (8, 12), (8, 12), "mean")
    got = module.teacher_sim(*images)
    assert got.shape == (2, 24, 24) and torch.allclose(got, expected, atol=1e-5)
    batch = {"image0": images[0], "image1": images[1], "matches0": torch.full((2, 24), -1)}
    batch["matches0"][:, 5] = 7
    losses = module.losses(batch)
    assert torch.isclose(losses["total"], 0.3 * losses["gt"] + 0.7 * losses["distill"])
    assert losses["distill"] > 0


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_bf16_on_cpu_trains_and_exports_a_matcher_checkpoint(world, tmp_path, precision):
    conf = _conf(tmp_path / "run", world, train={"max_steps": 3, "precision": precision}, val={"every": 2})
    result = train(RECIPE, conf, progress=False)
    assert result.global_step == 3
    assert [h["step"] for h in result.module.val_history] == [0.0, 2.0, 3.0]  # start, every 2, end
    assert all(np.isfinite(h["recall"]) for h in result.module.val_history)
    from visloc.matching.base import MATCHERS

    matcher = MATCHERS.build("loftr-coarse", {"weights": str(result.exported)})
    assert matcher.net.conf == PRESETS["s"]
    trained = result.module.model.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in matcher.net.state_dict().items())


@pytest.mark.slow
def test_short_cpu_run_learns_on_eight_world_pairs(tmp_path):
    # 8 train pairs rendered at 640x480, trained at 320x240; validation on the same pairs (no augmentation):
    # this checks fitting
    root = tmp_path / "world"
    conf = _conf(tmp_path / "run", root, data={"size": [320, 240]}, generate={"train_pairs": 8},
                 val={"root": str(root / "pairs_train"), "every": 40},
                 train={"max_steps": 120, "batch_size": 4, "lr": 3e-3, "warmup_steps": 10, "log_every": 10})
    result = train(RECIPE, conf, progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    loss = [e.value for e in events.Scalars("train/total")]
    precision = [e.value for e in events.Scalars("val/precision")]
    hist = result.module.val_history
    assert [h["step"] for h in hist] == [0.0, 40.0, 80.0, 120.0]
    assert precision == pytest.approx([h["precision"] for h in hist], nan_ok=True)  # logged to TensorBoard
    # measured (120 steps, 2026-12-07): loss 3.45 -> 0.98; precision 0 -> 0.80 (@1 cell 0.90); matches per pair
    # 0.25 -> 38; recall 0 -> 0.36. With 80 steps, on the packages a fresh install resolves today, it ended at
    # 9.5 matches per pair and recall 0.06, below the floors (the same at the commit before: not a code change)
    assert loss[-1] < 0.6 * loss[0]
    start, end = hist[0], hist[-1]

    def correct(h: dict[str, float]) -> float:  # exact matches per pair
        return h["precision"] * h["num_matches"] if h["num_matches"] else 0.0

    assert end["precision"] > 0.5 and end["precision"] > np.nan_to_num(start["precision"]) + 0.3
    assert correct(end) > 10 * correct(start) + 5 and end["recall"] > 0.1


DDP_SCRIPT = """
import json, sys
from pathlib import Path

import visloc.train.loftr.recipe as lr
from visloc.conf import apply_overrides
from visloc.train.core import train

calls = {"prepare": 0, "export": 0}
prepare, export = lr.LoFTRCoarse.prepare, lr.LoFTRCoarse.export

def count(key, fn):
    def wrapped(*args, **kwargs):
        calls[key] += 1
        return fn(*args, **kwargs)
    return wrapped

lr.LoFTRCoarse.prepare = count("prepare", prepare)
lr.LoFTRCoarse.export = count("export", export)
recipe = lr.LoFTRCoarse()
conf = apply_overrides(recipe.tiny_conf(Path(sys.argv[1])), {"train": {
    "max_steps": 3, "accelerator": "cpu", "devices": 2, "checkpoint_every": 3, "batch_size": 1}})
result = train(recipe, conf, progress=False)
print("RESULT " + json.dumps({"rank": result.global_rank, "step": result.global_step, **calls,
                              "val": len(result.module.val_history),
                              "exported": str(result.exported) if result.exported else None}), flush=True)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), str(run)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = sorted((json.loads(x[len("RESULT "):]) for x in out.stdout.splitlines() if x.startswith("RESULT ")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1] and all(r["step"] == 3 for r in rows)
    # rank zero alone generates the world, caches the ground truth, validates and exports
    assert [r["prepare"] for r in rows] == [1, 0] and [r["export"] for r in rows] == [1, 0]
    assert rows[0]["val"] == 3 and rows[1]["val"] == 0  # start, step 2, end
    assert rows[0]["exported"] == str(run / "loftr_coarse.pt") and (run / "loftr_coarse.pt").is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


def test_aliked_lightglue_positives_are_cached_and_merged(world, tmp_path):
    conf = _conf(tmp_path / "run", world, data={"size": [256, 192]}, distill={"teacher": "aliked-lightglue"})
    RECIPE.prepare(conf, tmp_path / "run")
    from visloc.train.loftr.distill import load_teacher_matches
    from visloc.train.loftr.recipe import teacher_cache_path

    path = teacher_cache_path(conf, tmp_path / "run")
    table = load_teacher_matches(path)
    plain, merged = RECIPE.train_dataset(conf, augment=False), RECIPE.dataset(conf, tmp_path / "run")
    assert sorted(table) == sorted(r.name0 for r in plain.rows) and path.parent == tmp_path / "run" / "teacher"
    agree = both = close = added = 0
    for i in range(len(plain)):
        gt, teacher = plain[i]["matches0"], table[plain.rows[i].name0]
        out = merged.gt(i)[0]
        assert np.array_equal(out[gt.numpy() >= 0], gt[gt >= 0].numpy())  # the depth GT is kept
        new = (gt.numpy() < 0) & (out >= 0)
        assert np.array_equal(out[new], teacher.numpy()[new])  # what is added is the teacher's
        added += int(new.sum())
        idx0 = torch.nonzero((gt >= 0) & (teacher >= 0))[:, 0]
        n, exact, near = match_counts(idx0, teacher[idx0], gt, 16)
        both, agree, close = both + n, agree + exact, close + near
    # a keypoint anywhere in its cell lands up to a cell away from where the cell centre lands: about half
    # agree exactly, nearly all within one cell (measured 54 and 100 of 100: the keypoint -> cell conversion)
    assert both > 50 and agree / both > 0.4 and close / both > 0.9 and added > 0
    RECIPE.prepare(conf, tmp_path / "run")  # a second prepare reuses the cache
    assert load_teacher_matches(path).keys() == table.keys()
