"""End-to-end distillation runs on CPU: the student learns from ALIKED, and a crashed run resumes."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from visloc.train.core import train as run_train
from visloc.train.recipe_base import recipe_conf

TINY = [
    "data.builtin=true",
    "data.size=[128,128]",
    "train.batch_size=4",
    "train.threads=1",
    "teacher.vocab_images=16",
    "train.log_every=1",
]


def _conf(tmp_path, *overrides):
    return recipe_conf("hfnet-distill", [f"run_dir={tmp_path / 'run'}", *TINY, *overrides])


def train(conf, progress=True, callbacks=()):
    return run_train("hfnet-distill", conf, progress=progress, callbacks=callbacks)


def scalars(run_dir, tag):
    """``[(step, value)]`` of a TensorBoard scalar the run wrote (what a user sees)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class _Steps(L.Callback):
    """The optimiser step at the start of every batch."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


@pytest.mark.slow
def test_short_run_learns_from_the_teacher(tmp_path):
    from visloc.weights.hfnet import load_hfnet

    conf = _conf(
        tmp_path,
        "train.max_steps=60",
        "train.lr=0.003",
        "train.checkpoint_every=30",
        "train.image_every=30",
        "train.seed=1",
    )
    result = train(conf, progress=False)
    assert result.global_step == 60 and result.resumed_from is None
    h = {k: scalars(result.run_dir, f"train/{k}") for k in ("total", "detector", "descriptor", "desc_cosine",
                                                             "repeatability")}
    assert [s for s, _ in h["total"]] == list(range(60))

    def mean(key, part):
        return float(np.nanmean([v for _, v in h[key][part]]))

    first, last = slice(0, 10), slice(-10, None)
    # measured over seeds 0-2 (first 10 -> last 10 steps): total 5.3 -> 3.4-3.7, cosine 0.45 -> 0.59-0.61,
    # repeatability 0.09-0.11 -> 0.17-0.24
    assert mean("total", last) < 0.85 * mean("total", first)
    assert mean("detector", last) < mean("detector", first) and mean("descriptor", last) < mean("descriptor", first)
    assert mean("desc_cosine", last) > mean("desc_cosine", first) + 0.05
    assert mean("repeatability", last) > mean("repeatability", first) + 0.03
    # the run directory: vocabulary, Lightning checkpoint, TensorBoard events, the exported student
    run = result.run_dir
    assert (run / "vocab.pt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert result.exported == run / "student.pt"
    ckpt = torch.load(result.exported, map_location="cpu", weights_only=True)
    assert ckpt["conf"]["descriptor_dim"] == 128
    student = load_hfnet(result.exported)
    sd = result.module.student.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in student.state_dict().items())


class _Crash(L.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


class _StartState(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.state = {k: v.clone() for k, v in pl_module.student.state_dict().items()}
        self.log_vars = pl_module.criterion.log_vars.detach().clone()
        self.optimizer_steps = [float(s["step"]) for s in trainer.optimizers[0].state.values()][:1]


@pytest.mark.slow
def test_resume_after_a_crash(tmp_path):
    crash_conf = _conf(tmp_path, "train.max_steps=100", "train.checkpoint_every=3", "train.image_every=0")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash_conf, progress=False, callbacks=[_Crash(at_step=7)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6  # checkpoints at steps 3 and 6
    saved_student = {k[len("student.") :]: v for k, v in saved["state_dict"].items() if k.startswith("student.")}

    start, steps = _StartState(), _Steps()
    result = train(
        _conf(tmp_path, "train.max_steps=9", "train.checkpoint_every=3", "train.image_every=0"),
        progress=False,
        callbacks=[start, steps],
    )
    assert result.resumed_from == last
    assert start.step == 6 and result.global_step == 9
    assert steps.steps == [6, 7, 8]
    assert all(torch.equal(start.state[k], v) for k, v in saved_student.items())
    assert torch.equal(start.log_vars, saved["state_dict"]["criterion.log_vars"])
    assert float(start.optimizer_steps[0]) == 6.0  # Adam's state came back too
    # a finished run continues with a higher max_steps from its final checkpoint
    steps = _Steps()
    more = train(
        _conf(tmp_path, "train.max_steps=11", "train.checkpoint_every=3", "train.image_every=0"), progress=False,
        callbacks=[steps],
    )
    assert more.global_step == 11 and steps.steps == [9, 10]
    # every step of the three runs logged its scalars once (log_every=1), crashed run included
    assert sorted({s for s, _ in scalars(tmp_path / "run", "train/total")}) == list(range(11))


@pytest.mark.slow
def test_cached_targets_run(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((80, 100, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"broken")
    conf = recipe_conf(
        "hfnet-distill",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.folders=[{tmp_path / 'imgs'}]",
            "data.size=[64,64]",
            "train.batch_size=2",
            "train.max_steps=3",
            "train.threads=1",
            "teacher.vocab_images=4",
            "teacher.vlad_clusters=4",
            "student.model.global_dim=512",
            "cache.enabled=true",
            "cache.top_k=2",
            "cache.reduce=2",
            "train.image_every=0",
            "train.log_every=2",
        ],
    )
    with caplog.at_level("INFO"):
        result = train(conf, progress=False)
    assert "HF-Net's export: 6.16 MB" in caplog.text
    cache = tmp_path / "run" / "target_cache"
    assert len(list(cache.glob("*.npz"))) == 4  # the unreadable image is skipped
    total = scalars(result.run_dir, "train/total")
    # scalars and agreement metrics on every log_every-th step only
    assert result.global_step == 3 and [s for s, _ in total] == [0, 2] and np.isfinite([v for _, v in total]).all()
    assert [s for s, _ in scalars(result.run_dir, "train/repeatability")] == [0, 2]
    from visloc.train.hfnet.cache import CachedDataset

    item = CachedDataset([str(tmp_path / "imgs" / "0.png")], conf, cache)[0]
    assert item["dense"].shape == (128, 8, 8) and item["cells"].shape == (65, 8, 8)
    assert torch.allclose(item["cells"].sum(0), torch.ones(8, 8)) and item["global"].shape == (512,)
    with pytest.raises(ValueError, match="other settings"):
        train(
            recipe_conf(
                "hfnet-distill",
                [
                    f"run_dir={tmp_path / 'run'}",
                    f"data.folders=[{tmp_path / 'imgs'}]",
                    "data.size=[64,64]",
                    "train.batch_size=2",
                    "train.max_steps=4",
                    "teacher.vlad_clusters=4",
                    "student.model.global_dim=512",
                    "cache.enabled=true",
                    "cache.top_k=3",
                ],
            ),
            progress=False,
        )
