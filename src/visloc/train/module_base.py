"""What the recipes' LightningModules share: loss scalars, the validation schedule and record, clipping.

``RecipeModule`` runs, on top of Lightning's loop:

- ``log_losses``: the batch's loss terms as ``train/<name>`` scalars every ``train.log_every`` optimiser steps
  (first micro-batch of a step, global rank zero), ``loss`` on the progress bar;
- validation before the first step of a fresh run (``val.at_start``), after every ``val.every``-th optimiser
  step and after the last one (unless that step was just validated): ``val_metrics`` on global rank zero,
  logged as ``val/<name>`` and appended to ``val_history``; the other ranks wait at the next gradient sync;
- the dataset's ``set_epoch(epoch)`` at each epoch start (seeded augmentation), when it has one;
- the loader's ``mark_consumed()`` at each batch start, when it has one
  (``train.datasets.sharded.ResumableLoader``: the position a mid-epoch checkpoint resumes from; such a loader
  seeds the dataset's epoch itself);
- gradient clipping at the global L2 norm ``grad_clip`` (0: none), after AMP's unscaling (Lightning's hook).

A subclass sets ``conf`` (with ``train: OptimConf`` and ``val.every`` / ``val.at_start``) through
``__init__``, implements ``val_metrics`` and overrides ``grad_clip`` when it clips.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

logger = logging.getLogger(__name__)


class RecipeModule(L.LightningModule):
    """Base of the recipes' modules (module docstring).

    Args:
        conf: the recipe's conf.
    """

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf
        self.val_history: list[dict[str, float]] = []
        self._validated_at = -1

    @property
    def grad_clip(self) -> float:
        """Global gradient-norm limit (0: no clipping)."""
        return 0.0

    def val_metrics(self) -> dict[str, float] | None:
        """The validation metrics of the current state (global rank zero only); None: nothing to validate."""
        raise NotImplementedError

    def log_losses(self, losses: Mapping[str, torch.Tensor], batch_idx: int, batch_size: int) -> torch.Tensor:
        """Log the batch's loss terms (module docstring); return ``losses["total"]``."""
        self.log("loss", losses["total"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        first = batch_idx % self.trainer.accumulate_grad_batches == 0
        if first and self.global_step % self.conf.train.log_every == 0 and self.trainer.is_global_zero:
            names = list(losses)
            values = torch.stack([losses[n].detach().float() for n in names]).tolist()
            self.log_scalars({f"train/{n}": v for n, v in zip(names, values, strict=True)})
        return losses["total"]

    def log_scalars(self, scalars: Mapping[str, float]) -> None:
        """Scalars to the logger at the current optimiser step."""
        if self.logger is not None:
            self.logger.log_metrics(dict(scalars), step=self.global_step)

    def validate(self) -> dict[str, float] | None:
        """Validation metrics at this step (rank zero; None elsewhere), logged and appended to ``val_history``."""
        self._validated_at = self.global_step
        if not self.trainer.is_global_zero:
            return None
        metrics = self.val_metrics()
        if metrics is None:
            return None
        self.val_history.append({"step": float(self.global_step), **metrics})
        self.log_scalars({f"val/{k}": x for k, x in metrics.items()})
        logger.info("step %d: val %s", self.global_step, ", ".join(f"{k} {x:.3f}" for k, x in metrics.items()))
        return metrics

    def on_train_start(self) -> None:
        """Validate a fresh run before its first step (``val.at_start``)."""
        if self.conf.val.at_start and self.global_step == 0:
            self.validate()

    def on_train_epoch_start(self) -> None:
        """Seed this epoch's augmentation (the dataset's ``set_epoch``, when it has one)."""
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch") and not hasattr(loader, "mark_consumed"):  # a ResumableLoader seeds it
            dataset.set_epoch(self.current_epoch)  # pyright: ignore[reportOptionalMemberAccess]  # checked

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Move the loader's position on (``mark_consumed``): this batch counts once its step is checkpointed."""
        mark = getattr(self.trainer.train_dataloader, "mark_consumed", None)
        if callable(mark):
            mark()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Validate after every ``val.every``-th optimiser step."""
        every, step = self.conf.val.every, self.global_step
        if every and step and step % every == 0 and step != self._validated_at:
            self.validate()

    def on_train_end(self) -> None:
        """Validate the final state unless its step was just validated."""
        if self.conf.val.every and self.global_step != self._validated_at:
            self.validate()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the global gradient L2 norm at ``grad_clip`` (0: no clipping)."""
        if self.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
