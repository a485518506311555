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

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from visloc.models.coarse_loftr import CoarseLoFTR
from visloc.train.core import warmup_lambda
from visloc.train.loftr.conf import LoFTRCoarseTrainConf
from visloc.train.loftr.data import WorldPairs
from visloc.train.loftr.distill import distill_kl, subsample_sim
from visloc.train.loftr.losses import coarse_loss
from visloc.train.loftr.validation import evaluate

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


class CoarseLoFTRModule(L.LightningModule):
    """Coarse LoFTR student trained on depth ground truth, optionally distilled (module docstring).

    Args:
        conf: the recipe.
        run_dir: the run folder.
        teacher: a LoFTR coarse teacher at 1/8 (or at the student's resolution); None: built in ``setup``
            when ``distill.teacher`` is ``loftr``.
    """

    teacher: CoarseLoFTR | None  # set with object.__setattr__: deliberately not a child module

    def __init__(self, conf: LoFTRCoarseTrainConf, run_dir: Path | None = None,
                 teacher: CoarseLoFTR | None = None) -> None:
        super().__init__()
        self.conf = conf
        self.run_dir = Path(run_dir) if run_dir is not None else Path(conf.run_dir)
        self.model = CoarseLoFTR(conf.model.resolved)
        object.__setattr__(self, "teacher", teacher)
        self.val_loader: DataLoader | None = None
        self.val_history: list[dict[str, float]] = []
        self._validated_at = -1

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

    def on_train_start(self) -> None:
        """Validate a fresh run before its first step (``val.at_start``)."""
        if self.conf.val.at_start and self.global_step == 0:
            self.validate()

    def on_train_epoch_start(self) -> None:
        """Seed the photometric augmentation of this epoch (``WorldPairs.set_epoch``)."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)  # pyright: ignore[reportOptionalMemberAccess]  # checked

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
        losses = self.losses(batch)
        self.log("loss", losses["total"].detach(), prog_bar=True, logger=False, batch_size=batch["image0"].shape[0])
        first = batch_idx % self.trainer.accumulate_grad_batches == 0
        if first and self.global_step % self.conf.train.log_every == 0 and self.trainer.is_global_zero:
            names = list(losses)
            values = torch.stack([losses[n].detach().float() for n in names]).tolist()
            self._log_metrics({f"train/{n}": v for n, v in zip(names, values, strict=True)})
        return losses["total"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Validate after every ``val.every``-th optimiser step."""
        every = self.conf.val.every
        if every and self.global_step and self.global_step % every == 0 and self.global_step != self._validated_at:
            self.validate()

    def on_train_end(self) -> None:
        """Validate the final state unless its step was just validated."""
        if self.conf.val.every and self.global_step != self._validated_at:
            self.validate()

    def validate(self) -> dict[str, float] | None:
        """Validation metrics at this step (rank zero; None elsewhere), logged and appended to ``val_history``."""
        self._validated_at = self.global_step
        if self.val_loader is None or not self.trainer.is_global_zero:
            return None
        v = self.conf.val
        metrics = evaluate(self.model, self.val_loader, self.conf.match, v.ransac_px, self.device)
        self.val_history.append({"step": float(self.global_step), **metrics})
        self._log_metrics({f"val/{k}": x for k, x in metrics.items()})
        logger.info("step %d: val %s", self.global_step, ", ".join(f"{k} {x:.3f}" for k, x in metrics.items()))
        return metrics

    def _log_metrics(self, scalars: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics(scalars, step=self.global_step)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient L2 norm at ``schedule.grad_clip`` (0: no clipping)."""
        clip = self.conf.schedule.grad_clip
        if clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the student; warm-up then step decay, per optimiser step."""
        t, s = self.conf.train, self.conf.schedule
        opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(t.warmup_steps, s.lr_steps, s.lr_gamma))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
