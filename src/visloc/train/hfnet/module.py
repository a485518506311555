"""The distillation LightningModule: frozen teachers run online on each batch, the HF-Net student trains.

The teacher is held outside the module's children: it is not optimised, not saved in Lightning
checkpoints (its weights and the VLAD vocabulary live in their own files), and not wrapped by DDP.
It runs in float32 with autocast off, whatever the Trainer's precision. Unless one is given, it is
built in ``setup`` (every rank, after rank zero prepared its vocabulary); cached runs need none.

Scalars (``train/`` prefix in TensorBoard), every ``train.log_every`` optimiser steps on global
rank zero: ``total``, ``global``, ``descriptor``, ``detector``, the learned ``s_*`` (or fixed
``w_*``), and two agreement metrics with the teacher, computed only on those steps:

- ``desc_cosine``: mean cosine of the student's and the teacher's dense descriptors over all cells;
- ``repeatability``: the fraction of the teacher's keypoints that have a student keypoint within
  3 px, the student keeping as many keypoints as the teacher found (its top-k after NMS), so that
  detecting everywhere cannot score.

The other steps do not wait for the device: the loss terms stay tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from visloc.models.hfnet import HFNet, detect_keypoints, logits_to_heatmap
from visloc.train.core import warmup_lambda
from visloc.train.hfnet.conf import HFNetDistillConf
from visloc.train.hfnet.losses import DistillationLoss
from visloc.train.hfnet.teachers import Targets, check_dims, load_teacher

#: repeatability radius in pixels
REPEAT_PX = 3.0


def repeatability(
    teacher_kpts: list[torch.Tensor], student_kpts: list[torch.Tensor], radius: float = REPEAT_PX
) -> float:
    """Fraction of teacher keypoints ``[N, 2]`` with a student keypoint within ``radius`` px (images pooled)."""
    hit, total = 0, 0
    for t, s in zip(teacher_kpts, student_kpts, strict=True):
        total += len(t)
        if len(t) and len(s):
            hit += int((torch.cdist(t.float(), s.float()).min(1).values <= radius).sum())
    return hit / total if total else float("nan")


def student_keypoints(logits: torch.Tensor, counts: list[int], nms_radius: int) -> list[torch.Tensor]:
    """Per image, the student's ``counts[b]`` best keypoints ``[N, 2]`` (NMS, 2 px border)."""
    heat = logits_to_heatmap(logits.float())
    return [
        detect_keypoints(heat[b : b + 1], nms_radius, threshold=0.0, max_keypoints=n, border=2)[0][0]
        if n
        else heat.new_zeros(0, 2)
        for b, n in enumerate(counts)
    ]


class DistillModule(L.LightningModule):
    """HF-Net student distilled from a teacher (an ``hfnet.teachers.Teacher``).

    Args:
        conf: the recipe.
        run_dir: the run folder (where ``setup`` finds the teacher's vocabulary).
        teacher: ``teacher(image [B, 3, H, W]) -> Targets``; None: built in ``setup``, or not at all
            when every batch carries cached targets (``dense``, ``cells``, ``global``, ``keypoints``).
    """

    teacher: nn.Module | None  # set with object.__setattr__: deliberately not a child module

    def __init__(self, conf: HFNetDistillConf, run_dir: Path | None = None, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.conf = conf
        self.run_dir = Path(run_dir) if run_dir is not None else Path(conf.run_dir)
        self.student = HFNet(conf.student.model)
        lc = conf.loss
        self.criterion = DistillationLoss(lc.learned_weights, lc.init_log_vars, lc.weights)
        object.__setattr__(self, "teacher", teacher)  # deliberately not a child module

    def setup(self, stage: str) -> None:
        """Every rank, after rank zero's ``prepare``: the online teacher with its vocabulary."""
        if self.teacher is None and not self.conf.cache.enabled:
            teacher = load_teacher(self.conf.teacher, self.run_dir)
            check_dims(teacher, self.conf.student.model.descriptor_dim, self.conf.student.model.global_dim)
            object.__setattr__(self, "teacher", teacher)

    def on_fit_start(self) -> None:
        """Move the teacher to the student's device."""
        if self.teacher is not None:
            self.teacher.to(self.device)

    def targets(self, batch: dict[str, Any]) -> Targets:
        """Cached targets of the batch, or the teacher's on its clean RGB crops."""
        if "dense" in batch:
            return Targets(
                batch["dense"].float(), batch["cells"].float(), batch["global"].float(), list(batch["keypoints"])
            )
        if self.teacher is None:
            raise ValueError("DistillModule: no teacher and no cached targets in the batch")
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.teacher(batch["image"].float())

    @torch.no_grad()
    def agreement(self, pred: dict[str, torch.Tensor], t: Targets) -> dict[str, float]:
        """``desc_cosine`` and ``repeatability`` of the student against the teacher."""
        cos = (pred["dense_descriptors"].float() * t.dense).sum(1).mean()
        kpts = student_keypoints(pred["logits"], [len(k) for k in t.keypoints], self.conf.student.nms_radius)
        return {"desc_cosine": float(cos), "repeatability": repeatability(t.keypoints, kpts)}

    def _first_micro_batch(self, batch_idx: int) -> bool:
        return batch_idx % self.trainer.accumulate_grad_batches == 0

    def _log_scalars(self, losses: dict[str, torch.Tensor], pred: dict[str, torch.Tensor], t: Targets) -> None:
        """Loss terms (one device sync for all) and the agreement metrics, to the logger."""
        if self.logger is None or not self.trainer.is_global_zero:
            return
        names = list(losses)
        values = torch.stack([losses[n].detach().float() for n in names]).tolist()
        scalars = dict(zip(names, values, strict=True)) | self.agreement(pred, t)
        self.logger.log_metrics({f"train/{k}": v for k, v in scalars.items()}, step=self.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Teacher targets, student forward, losses (and scalars every ``log_every`` steps); the total loss."""
        t = self.targets(batch)
        pred = self.student(batch["student_image"])
        losses = self.criterion(pred, t.dense, t.cells, t.global_)
        bs = batch["student_image"].shape[0]
        self.log("loss", losses["total"].detach(), prog_bar=True, logger=False, batch_size=bs)
        tc = self.conf.train
        if self._first_micro_batch(batch_idx):
            if self.global_step % tc.log_every == 0:
                self._log_scalars(losses, pred, t)
            if tc.image_every and self.global_step % tc.image_every == 0:
                self._log_image(batch["student_image"][0], t.keypoints[0], pred["logits"][:1])
        return losses["total"]

    def _log_image(self, gray: torch.Tensor, teacher_kpts: torch.Tensor, logits: torch.Tensor) -> None:
        """Teacher keypoints red, student keypoints green, on the student's input, to TensorBoard."""
        exp = getattr(self.logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_image") or not self.trainer.is_global_zero:
            return
        img = gray.detach().float().cpu().expand(3, -1, -1).clone()
        student = student_keypoints(logits.detach(), [len(teacher_kpts)], self.conf.student.nms_radius)[0]
        for pts, ch in ((teacher_kpts, 0), (student, 1)):
            xy = pts.detach().round().long().cpu()
            xy[:, 0].clamp_(0, img.shape[2] - 1)
            xy[:, 1].clamp_(0, img.shape[1] - 1)
            img[:, xy[:, 1], xy[:, 0]] = 0.0
            img[ch, xy[:, 1], xy[:, 0]] = 1.0
        exp.add_image("train/keypoints", img, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on the student and the loss weights; linear warm-up then constant learning rate."""
        t = self.conf.train
        opt = torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(t.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
