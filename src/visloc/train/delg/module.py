"""The LightningModule of the ``delg`` and ``delf`` recipes: the network, its classifiers, SGD and validation.

``mode`` is ``delg`` (joint: ArcFace + attention + reconstruction, ``losses.delg_losses``), ``tuning``
(DELF stage 1: backbone + a linear classifier on average-pooled ``block3``) or ``attn`` (DELF stage 2:
attention head + its classifier on frozen features). Parameters a mode does not train are frozen
(``requires_grad`` False), so DDP sees no unused parameter; in ``attn`` the backbone's BatchNorm also stays
in eval mode (``train`` is overridden). The classifiers (``arcface``, ``attention_classifier``,
``classifier``) live here, not in ``model`` (the export drops them, as the official exports do).

The losses run in float32 with autocast off (ArcFace's ``acos`` margin needs it); the network runs under the
Trainer's precision. Optimiser: SGD (``train.lr``, ``schedule.momentum``, ``train.weight_decay``) on the
trained parameters, ``LambdaLR`` per optimiser step: the core's warm-up times ``1 - step / max_steps``
(``schedule.decay: linear``, TF's schedule), gradient-norm clipping at ``schedule.grad_clip``.

Scalars on global rank zero: ``train/{total,global,attention,reconstruction,classifier,accuracy_*}`` (those of
the mode) every ``train.log_every`` steps; ``val/{accuracy_*, map_easy, map_medium, map_hard}`` every
``val.every`` steps (also before the first step of a fresh run and after the last), kept in ``val_history``.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from visloc.models.delg import DELG, DELGOutput, attention_pool
from visloc.models.heads.arcface import ArcFaceHead
from visloc.train.core import warmup_lambda
from visloc.train.delg.conf import DELFTrainConf, DELGTrainConf
from visloc.train.delg.data import LandmarkImages, open_training_data
from visloc.train.delg.losses import delf_attn_losses, delf_tuning_losses, delg_losses
from visloc.train.delg.validation import RetrievalSet, classification_accuracy, load_retrieval_set, retrieval_map
from visloc.train.module_base import RecipeModule

logger = logging.getLogger(__name__)
Mode = Literal["delg", "tuning", "attn"]


def schedule_lambda(warmup_steps: int, max_steps: int, linear: bool = True) -> Any:
    """``LambdaLR`` factor of optimiser step ``s``: warm-up times ``max(0, 1 - s / max_steps)`` (or 1)."""
    warm = warmup_lambda(warmup_steps)
    return lambda s: warm(s) * (max(0.0, 1.0 - s / max_steps) if linear else 1.0)


def _linear(dim: int, num_classes: int) -> nn.Linear:
    """Keras ``Dense``'s initialisation: Glorot-uniform kernel, zero bias."""
    fc = nn.Linear(dim, num_classes)
    nn.init.xavier_uniform_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


def _float(out: DELGOutput) -> DELGOutput:
    """Every tensor of ``out`` in float32."""
    values = {f.name: getattr(out, f.name) for f in fields(out)}
    return replace(out, **{k: v.float() for k, v in values.items() if isinstance(v, torch.Tensor)})


class DELGTrainModule(RecipeModule):
    """DELG / DELF network with its classifiers for one training mode (module docstring).

    Args:
        conf: the recipe's conf.
        mode: ``delg``, ``tuning`` or ``attn``.
        num_classes: ``K``.
        run_dir: the run folder.
    """

    conf: DELGTrainConf | DELFTrainConf

    def __init__(self, conf: DELGTrainConf | DELFTrainConf, mode: Mode, num_classes: int,
                 run_dir: Path | None = None) -> None:
        super().__init__(conf)
        self.mode, self.num_classes = mode, num_classes
        self.run_dir = Path(run_dir) if run_dir is not None else Path(conf.run_dir)
        self.model = DELG(conf.model.resolved)
        c3 = self.model.block3_channels
        if mode == "delg":
            if not isinstance(conf, DELGTrainConf):
                raise TypeError(f"mode delg needs a DELGTrainConf, got {type(conf).__name__}")
            a = conf.arcface
            self.arcface = ArcFaceHead(self.model.global_dim, num_classes, a.margin, a.scale, a.learn_scale,
                                       a.sub_centers)
        if mode in ("delg", "attn"):
            self.attention_classifier = _linear(c3, num_classes)
        if mode == "tuning":
            self.classifier = _linear(c3, num_classes)
        self._freeze()
        self.preprocessing = conf.model.preprocessing
        self.val_loader: DataLoader | None = None
        self.retrieval_set: RetrievalSet | None = None

    def _freeze(self) -> None:
        m = self.model
        frozen: list[nn.Module] = []
        if self.mode == "tuning":  # only conv1..conv4 and the classifier train
            frozen = [m.attention, m.backbone.layer4, *(x for x in (m.autoencoder, m.embedding) if x is not None)]
        elif self.mode == "attn":
            frozen = [m.backbone, *(x for x in (m.autoencoder, m.embedding) if x is not None)]
        for part in frozen:
            part.requires_grad_(False)

    def train(self, mode: bool = True) -> DELGTrainModule:
        """``nn.Module.train``, keeping the frozen backbone of stage ``attn`` in eval mode (BatchNorm statistics)."""
        super().train(mode)
        if self.mode == "attn":
            self.model.backbone.eval()
        return self

    # ------------------------------------------------------------------ forward passes

    def forward_train(self, images: torch.Tensor) -> DELGOutput:
        """The network's outputs the mode's losses need."""
        if self.mode == "tuning":
            return self.model(images, local=False, global_=False)
        return self.model(images, local=True, global_=self.mode == "delg")

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``total`` and the mode's terms and accuracies (``losses``) for one batch."""
        out = self.forward_train(images)
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = _float(out)
            if self.mode == "tuning":
                return delf_tuning_losses(out, labels, self.classifier)
            if self.mode == "attn":
                return delf_attn_losses(out, labels, self.attention_classifier)
            lc = self.conf.loss  # pyright: ignore[reportAttributeAccessIssue]  # mode delg: a DELGTrainConf
            return delg_losses(out, labels, self.arcface, self.attention_classifier, lc.attention_weight,
                               lc.reconstruction_weight)

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation logits ``[B, K]`` per classifier (ArcFace: the cosine, no margin)."""
        out = _float(self.forward_train(images))
        if self.mode == "tuning":
            return {"classifier": self.classifier(out.block3.mean(dim=(-2, -1)))}
        if out.attention is None:
            raise ValueError("logits: no attention computed")
        result = {"attention": self.attention_classifier(attention_pool(out.block3, out.attention))}
        if self.mode == "delg" and out.global_prelogits is not None:
            result["global"] = self.arcface.cosine(out.global_prelogits)
        return result

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` L2-normalised validation descriptor (``validation``'s module docstring)."""
        if self.mode == "delg":
            out = self.model(images, local=False, global_=True)
            if out.global_descriptor is None:
                raise ValueError("descriptor: the model has no global head")
            return out.global_descriptor.float()
        out = _float(self.forward_train(images))
        if self.mode == "tuning":
            return F.normalize(out.block3.mean(dim=(-2, -1)), dim=-1)
        if out.attention is None:
            raise ValueError("descriptor: no attention computed")
        return F.normalize(attention_pool(out.block3, out.attention), dim=-1)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        """Global rank zero, after ``prepare``: the validation images and the retrieval set."""
        v, d = self.conf.val, self.conf.data
        if not v.every or not self.trainer.is_global_zero or self.val_loader is not None:
            return
        layout, split, _ = open_training_data(d)
        items = split.val[:v.max_images] if v.max_images else split.val
        if items:
            self.val_loader = DataLoader(LandmarkImages(layout, items, d.image_size, self.preprocessing),
                                         batch_size=v.batch_size, num_workers=d.num_workers)
        if v.retrieval_root and self.retrieval_set is None:
            self.retrieval_set = load_retrieval_set(v.retrieval_root, v.retrieval_gnd, v.max_queries,
                                                    v.max_database)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The batch's losses (scalars every ``train.log_every`` optimiser steps); the total."""
        labels = torch.as_tensor(batch["label"], device=self.device)
        return self.log_losses(self.losses(batch["image"], labels), batch_idx, len(labels))

    @property
    def grad_clip(self) -> float:
        """``schedule.grad_clip`` (TF: 10)."""
        return self.conf.schedule.grad_clip

    def val_metrics(self) -> dict[str, float] | None:
        """Accuracy on the held-out images and retrieval mAP, in eval mode; None without validation data."""
        if self.val_loader is None and self.retrieval_set is None:
            return None
        was_training = self.training
        self.eval()
        metrics: dict[str, float] = {}
        try:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                if self.val_loader is not None:
                    metrics |= classification_accuracy(self.logits, self.val_loader, self.device)
                if self.retrieval_set is not None:
                    v = self.conf.val
                    metrics |= retrieval_map(self.descriptor, self.retrieval_set, v.retrieval_size,
                                             self.preprocessing, v.batch_size, self.device)
        finally:
            self.train(was_training)
        return metrics

    def configure_optimizers(self) -> dict[str, Any]:
        """SGD with momentum on the trained parameters; warm-up times linear decay, per optimiser step."""
        t, s = self.conf.train, self.conf.schedule
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=t.lr, momentum=s.momentum, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(t.warmup_steps, t.max_steps,
                                                                       s.decay == "linear"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
