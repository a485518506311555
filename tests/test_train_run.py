"""End-to-end distillation runs on CPU: the student learns from ALIKED, and a crashed run resumes."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from visloc.train.config import load_train_conf

TINY = [
    "data.builtin=true",
    "data.size=[128,128]",
    "train.batch_size=4",
    "train.threads=1",
    "teacher.vocab_images=16",
    "train.log_every=5",
]


def _conf(tmp_path, *overrides):
    return load_train_conf(None, [f"run_dir={tmp_path / 'run'}", *TINY, *overrides])


@pytest.mark.slow
def test_short_run_learns_from_the_teacher(tmp_path):
    from visloc.train.recipe import train
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
    h = result.module.history
    assert len(h) == 60

    def mean(key, part):
        return float(np.nanmean([x[key] for x in part]))

    first, last = h[:10], h[-10:]
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
    ckpt = torch.load(result.student_path, map_location="cpu", weights_only=True)
    assert ckpt["conf"]["descriptor_dim"] == 128
    student = load_hfnet(result.student_path)
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
    from visloc.train.recipe import train

    crash_conf = _conf(tmp_path, "train.max_steps=100", "train.checkpoint_every=3", "train.image_every=0")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash_conf, progress=False, callbacks=[_Crash(at_step=7)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6  # checkpoints at steps 3 and 6
    saved_student = {k[len("student.") :]: v for k, v in saved["state_dict"].items() if k.startswith("student.")}

    start = _StartState()
    result = train(
        _conf(tmp_path, "train.max_steps=9", "train.checkpoint_every=3", "train.image_every=0"),
        progress=False,
        callbacks=[start],
    )
    assert result.resumed_from == last
    assert start.step == 6 and result.global_step == 9
    assert [x["step"] for x in result.module.history] == [6.0, 7.0, 8.0]
    assert all(torch.equal(start.state[k], v) for k, v in saved_student.items())
    assert torch.equal(start.log_vars, saved["state_dict"]["criterion.log_vars"])
    assert float(start.optimizer_steps[0]) == 6.0  # Adam's state came back too
    # a finished run continues with a higher max_steps from its final checkpoint
    more = train(
        _conf(tmp_path, "train.max_steps=11", "train.checkpoint_every=3", "train.image_every=0"), progress=False
    )
    assert more.global_step == 11 and [x["step"] for x in more.module.history] == [9.0, 10.0]


@pytest.mark.slow
def test_cached_targets_run(tmp_path, caplog):
    from visloc.train.recipe import train

    (tmp_path / "imgs").mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((80, 100, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"broken")
    conf = load_train_conf(
        None,
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
        ],
    )
    with caplog.at_level("INFO"):
        result = train(conf, progress=False)
    assert "HF-Net's export: 6.16 MB" in caplog.text
    cache = tmp_path / "run" / "target_cache"
    assert len(list(cache.glob("*.npz"))) == 4  # the unreadable image is skipped
    assert result.global_step == 3 and np.isfinite([x["total"] for x in result.module.history]).all()
    from visloc.train.cache import CachedDataset

    item = CachedDataset([str(tmp_path / "imgs" / "0.png")], conf, cache)[0]
    assert item["dense"].shape == (128, 8, 8) and item["cells"].shape == (65, 8, 8)
    assert torch.allclose(item["cells"].sum(0), torch.ones(8, 8)) and item["global"].shape == (512,)
    with pytest.raises(ValueError, match="other settings"):
        train(
            load_train_conf(
                None,
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
