"""The distillation recipe: a Lightning Trainer built from a ``TrainConf``, run in ``conf.run_dir``.

A run directory holds::

    conf.yaml              the resolved configuration
    vocab.pt               the teacher's VLAD vocabulary (learned at the first start, reused on resume)
    checkpoints/last.ckpt  Lightning state every ``train.checkpoint_every`` steps and at the end
    tb/                    TensorBoard: losses, s_i, desc_cosine, repeatability, lr, keypoint pictures
    target_cache/          the optional compact target cache
    student.pt             the student in the hfnet checkpoint format (``features.hfnet_weights``)

Starting a run in a directory that has ``checkpoints/last.ckpt`` resumes from it (model, optimiser,
scheduler, step), so a crashed run continues with the same command, and a finished one continues
with a higher ``train.max_steps``. Multi-GPU: ``train.devices=N`` (Lightning's DDP), or ``torchrun
--nproc_per_node N`` with the same ``train.devices``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visloc.conf import conf_to_dict
from visloc.features.hfnet_weights import load_backbone_weights, load_hfnet, save_hfnet
from visloc.io.atomic import atomic_write_text
from visloc.retrieval.vlad import load_vocabulary, save_vocabulary
from visloc.train.config import TrainConf
from visloc.train.data import DistillDataset, collate, gather_images
from visloc.train.module import DistillModule
from visloc.train.teachers import build_teacher, learn_teacher_vocabulary

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run left: the exported student, the module (with its ``history``) and the final step."""

    run_dir: Path
    student_path: Path
    module: DistillModule
    global_step: int
    resumed_from: Path | None


def prepare_teacher(conf: TrainConf, names: list[str], run_dir: Path) -> nn.Module:
    """Build the teacher; learn its VLAD vocabulary into ``run_dir/vocab.pt`` unless there is one."""
    teacher = build_teacher(conf.teacher)
    if conf.teacher.netvlad_weights:
        return teacher
    path = run_dir / "vocab.pt"
    k, d = conf.teacher.vlad_clusters, teacher.descriptor_dim
    if path.is_file():
        teacher.set_vocabulary(load_vocabulary(path, k, d).centroids)
        return teacher
    ds = DistillDataset(names, conf.data, augment=False)
    idx = np.unique(np.linspace(0, len(names) - 1, min(len(names), conf.teacher.vocab_images)).round().astype(int))
    images = [ds[int(i)]["image"] for i in idx]
    centroids = learn_teacher_vocabulary(teacher, images, k, seed=conf.train.seed)
    save_vocabulary(
        path,
        centroids,
        {"num_clusters": k, "teacher": conf.teacher.local},
        {"extractor": f"{conf.teacher.local}-dense-cells", "images": len(images)},
    )
    teacher.set_vocabulary(centroids)
    return teacher


def build_student(conf: TrainConf, module: DistillModule) -> None:
    """Initialise the student from ``student.init`` (an hfnet checkpoint) or ImageNet backbone weights."""
    s = conf.student
    if s.init:
        init = load_hfnet(s.init)
        if init.conf != s.model:
            raise ValueError(f"student.init: {s.init} has conf {init.conf}, the recipe asks for {s.model}")
        module.student.load_state_dict(init.state_dict())
    elif s.backbone_weights:
        load_backbone_weights(module.student, s.backbone_weights)


def build_trainer(
    conf: TrainConf, run_dir: Path, progress: bool = True, callbacks: Sequence[L.Callback] = ()
) -> L.Trainer:
    """Lightning Trainer: precision, accumulation, DDP, checkpoints, TensorBoard, lr monitor."""
    t = conf.train
    precision = t.precision
    if precision == "auto":
        precision = "16-mixed" if torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda") else "32-true"
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every,
        save_last=True,
        save_top_k=1,
    )
    return L.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy="ddp" if t.devices > 1 else "auto",
        precision=precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""),
        callbacks=[ckpt, LearningRateMonitor(logging_interval="step"), *callbacks],
        default_root_dir=str(run_dir),
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
    )


def build_dataset(conf: TrainConf, names: list[str], teacher: nn.Module, run_dir: Path) -> Dataset:
    """The training set: online (teacher on each batch) or from the compact target cache."""
    if not conf.cache.enabled:
        return DistillDataset(names, conf.data)
    from visloc.train.cache import CachedDataset, build_cache

    cache_dir = Path(conf.cache.dir) if conf.cache.dir else run_dir / "target_cache"
    build_cache(conf, names, teacher, cache_dir)
    return CachedDataset(names, conf, cache_dir)


def train(conf: TrainConf, progress: bool = True, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Run (or resume) the recipe; returns the exported student's path and the module.

    Args:
        conf: the recipe (``load_train_conf``).
        progress: show Lightning's progress bar and model summary.
        callbacks: extra Lightning callbacks (tests, custom monitoring).
    """
    run_dir = Path(conf.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "conf.yaml", yaml.safe_dump(conf_to_dict(conf), sort_keys=False))
    if conf.train.threads > 0:
        torch.set_num_threads(conf.train.threads)
    L.seed_everything(conf.train.seed, workers=True, verbose=False)
    names = gather_images(conf.data)
    teacher = prepare_teacher(conf, names, run_dir)
    if teacher.global_dim != conf.student.model.global_dim:
        raise ValueError(
            f"student.model.global_dim={conf.student.model.global_dim} but the global teacher gives "
            f"{teacher.global_dim}"
        )
    if teacher.descriptor_dim != conf.student.model.descriptor_dim:
        raise ValueError(
            f"student.model.descriptor_dim={conf.student.model.descriptor_dim} but the local teacher "
            f"gives {teacher.descriptor_dim}"
        )
    module = DistillModule(conf, None if conf.cache.enabled else teacher)
    build_student(conf, module)
    dataset = build_dataset(conf, names, teacher, run_dir)
    if len(dataset) < conf.train.batch_size:
        raise ValueError(
            f"data: {len(dataset)} items are fewer than train.batch_size={conf.train.batch_size} (raise data.repeat)"
        )
    workers = conf.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=conf.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
    )
    trainer = build_trainer(conf, run_dir, progress, callbacks)
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = last if last.is_file() else None
    if resumed:
        logger.info("resuming from %s", resumed)
    # the Lightning checkpoint holds tensors and plain containers only: no pickled objects on resume
    trainer.fit(module, loader, ckpt_path=str(resumed) if resumed else None, weights_only=True)
    trainer.save_checkpoint(last, weights_only=False)  # full state (optimizer, loops): resumable
    student_path = run_dir / "student.pt"
    if trainer.is_global_zero:
        save_hfnet(student_path, module.student)
    return TrainResult(run_dir, student_path, module, int(trainer.global_step), resumed)
