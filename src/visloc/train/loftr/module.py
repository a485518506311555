"""The ``loftr-coarse`` LightningModule: the Coarse LoFTR student, its losses, optimiser and validation.

One step: both images through the student (``[B, L, S]`` confidences and similarities), the ground-truth
term (``losses.coarse_loss``: focal or BCE) and, with a LoFTR teacher, ``gt_weight * GT + weight * KL``
(``distill.distill_kl`` on the teacher's 1/8 similarities subsampled to the student's grid). The teacher
is held outside the module's children (not optimised, not in the Lightning checkpoint, not wrapped by
DDP) and runs in float32 with autocast off, whatever the Trainer's precision.

Optimiser: AdamW (``train.lr``, ``train.weight_decay``), one ``LambdaLR`` per optimiser step: the core's
linear warm-up times ``schedule.lr_gamma ** (milestones passed)`` (``schedule.lr_steps``, LoFTR's
MultiStepLR); gradient-norm clipping at ``schedule.grad_clip`` (Lightning's ``configure_gradient_clipping``
hook, after AMP's unscaling).

Scalars on global rank zero: ``train/{total,gt,pos,neg,num_pos[,distill]}`` every ``train.log_every``
optimiser steps; ``val/{precision,precision@1,recall,num_matches,auc@5,auc@10,auc@20}`` every
``val.every`` steps (``validation``; also at the start of a fresh run and after the last step), kept in
``val_history`` too. Validation runs on rank zero only; the other ranks wait at the next gradient sync.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from visloc.models.coarse_loftr import CoarseLoFTR
from visloc.train.core import warmup_lambda
from visloc.train.loftr.conf import LoFTRCoarseTrainConf
from visloc.train.loftr.data import WorldPairs
from visloc.train.loftr.distill import distill_kl, subsample_sim
from visloc.train.loftr.losses import coarse_loss
from visloc.train.loftr.validation import evaluate
from visloc.train.module_base import RecipeModule

logger = logging.getLogger(__name__)


def schedule_lambda(warmup_steps: int, lr_steps: tuple[int, ...], gamma: float) -> Callable[[int], float]:
    """``LambdaLR`` factor of optimiser step ``s``: linear warm-up, times ``gamma`` per milestone ``<= s``."""
    warm, steps = warmup_lambda(warmup_steps), sorted(lr_steps)
    return lambda s: warm(s) * gamma ** bisect.bisect_right(steps, s)


def val_pairs(conf: LoFTRCoarseTrainConf) -> WorldPairs:
    """The validation pairs: ``val.root``, or ``data.root``'s ``val`` split (no augmentation)."""
    return WorldPairs(conf.data if conf.val.root is None else replace(conf.data, root=conf.val.root), "val")


def val_count(conf: LoFTRCoarseTrainConf, pairs: WorldPairs) -> int:
    """How many of ``pairs`` validate: the first ``val.num_pairs`` (0: all)."""
    n = conf.val.num_pairs
    return min(n, len(pairs)) if n else len(pairs)


def load_loftr_teacher(conf: LoFTRCoarseTrainConf) -> CoarseLoFTR:
    """The frozen LoFTR coarse teacher (``loftr-outdoor`` preset) from ``distill.path``."""
    from visloc.weights.converters.loftr import load_loftr_coarse

    teacher = load_loftr_coarse(str(conf.distill.path), "loftr-outdoor")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


class CoarseLoFTRModule(RecipeModule):
    """Coarse LoFTR student trained on depth ground truth, optionally distilled (module docstring).

    Args:
        conf: the recipe.
        run_dir: the run folder.
        teacher: a LoFTR coarse teacher at 1/8 (or at the student's resolution); None: built in ``setup``
            when ``distill.teacher`` is ``loftr``.
    """

    conf: LoFTRCoarseTrainConf
    teacher: CoarseLoFTR | None  # set with object.__setattr__: deliberately not a child module

    def __init__(self, conf: LoFTRCoarseTrainConf, run_dir: Path | None = None,
                 teacher: CoarseLoFTR | None = None) -> None:
        super().__init__(conf)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(conf.run_dir)
        self.model = CoarseLoFTR(conf.model.resolved)
        object.__setattr__(self, "teacher", teacher)
        self.val_loader: DataLoader | None = None

    def setup(self, stage: str) -> None:
        """Every rank after ``prepare``: the LoFTR teacher; on rank zero the validation loader."""
        if self.teacher is None and self.conf.distill.teacher == "loftr":
            object.__setattr__(self, "teacher", load_loftr_teacher(self.conf))
        if self.conf.val.every and self.val_loader is None and self.trainer.is_global_zero:
            pairs = val_pairs(self.conf)
            subset = Subset(pairs, range(val_count(self.conf, pairs)))
            self.val_loader = DataLoader(subset, batch_size=self.conf.val.batch_size)

    def on_fit_start(self) -> None:
        """Move the teacher to the student's device."""
        if self.teacher is not None:
            self.teacher.to(self.device)

    def teacher_sim(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """The teacher's similarities on the student's grid ``[B, L, S]`` (float32, no gradient)."""
        if self.teacher is None:
            raise ValueError("CoarseLoFTRModule: distillation without a teacher")
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sim = self.teacher(image0.float(), image1.float())["sim"].float()
        if self.model.conf.resolution == self.teacher.conf.resolution:
            return sim
        hw0 = self.teacher.grid(image0.shape[2], image0.shape[3])
        hw1 = self.teacher.grid(image1.shape[2], image1.shape[3])
        return subsample_sim(sim, hw0, hw1, self.conf.distill.subsample)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``total`` and its terms for one batch (``gt``, ``pos``, ``neg``, ``num_pos``, ``distill``)."""
        out = self.model(batch["image0"], batch["image1"])
        gt = coarse_loss(out["conf"], batch["matches0"], self.conf.loss)
        terms = {"gt": gt["total"], "pos": gt["pos"], "neg": gt["neg"], "num_pos": gt["num_pos"]}
        if self.teacher is None:
            return {"total": gt["total"], **terms}
        d = self.conf.distill
        kl = distill_kl(out["sim"], self.teacher_sim(batch["image0"], batch["image1"]), d.temperature)
        return {"total": d.gt_weight * gt["total"] + d.weight * kl, **terms, "distill": kl}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Losses of the batch (scalars every ``log_every`` optimiser steps); the total."""
        return self.log_losses(self.losses(batch), batch_idx, int(batch["image0"].shape[0]))

    @property
    def grad_clip(self) -> float:
        """``schedule.grad_clip``."""
        return self.conf.schedule.grad_clip

    def val_metrics(self) -> dict[str, float] | None:
        """Match precision / recall and pose AUC on the validation pairs (``validation.evaluate``)."""
        if self.val_loader is None:
            return None
        return evaluate(self.model, self.val_loader, self.conf.match, self.conf.val.ransac_px, self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the student; warm-up then step decay, per optimiser step."""
        t, s = self.conf.train, self.conf.schedule
        opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(t.warmup_steps, s.lr_steps, s.lr_gamma))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
