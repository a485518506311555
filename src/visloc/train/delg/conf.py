"""Typed, frozen configuration of the ``delg`` and ``delf`` recipes.

A YAML file (``configs/delg.yaml``, ``configs/delf.yaml``) holds ``recipe: delg`` (or ``delf``) and the
sections below at its top level; ``train:`` is the core's ``OptimConf`` (``train.lr``: SGD's initial rate,
``train.weight_decay``, ``train.warmup_steps``, ``train.precision`` for AMP...). ``check_delg`` /
``check_delf`` raise ``ConfError`` naming the field.

Defaults follow tensorflow/models ``delf/python/training/train.py`` (@4b8f7d4): SGD with momentum 0.9,
learning rate 0.01 decayed linearly to 0 over ``train.max_steps`` (500000 there; the DELG paper's GLDv2
runs are quoted at about 1.5M steps), global batch 32, gradient clipping at global norm 10, loss weights
attention 1.0 and reconstruction 10.0, ArcFace margin 0.1 and a fixed scale sqrt(2048). The image size
defaults to 512 (the DELG paper, tensorflow/models#9526); the TF code's flag default is 321.

Weight decay: ``train.weight_decay`` (SGD's, on every trained parameter) defaults to 0 because the TF code in
effect applies none: its attention convolutions declare an L2 kernel regulariser (1e-4) but ``model.losses``
is never added to the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from visloc.conf import ConfError
from visloc.models.delg import PRESETS, DELGConf
from visloc.train.core import OptimConf, check_optim
from visloc.weights.records import DELG_RGB, IMAGENET_RGB, Preprocessing

#: the DELF stages: fine-tune the backbone with a classifier, then train the attention on frozen features
Stage = Literal["tuning", "attn"]


def is_keras_file(path: str) -> bool:
    """Whether ``path`` names a Keras weights file (``.h5`` / ``.hdf5``); anything else is read as a torch file."""
    return Path(path).suffix.lower() in (".h5", ".hdf5")


@dataclass(frozen=True)
class ModelConf:
    """The network: a preset (``models.delg.PRESETS``) or a full ``arch``, and what it starts from.

    Attributes:
        preset: a ``PRESETS`` name, used when ``arch`` is None.
        arch: the full architecture (overrides ``preset``).
        init: a visloc ``delg`` checkpoint to start from (its conf must be the architecture).
        imagenet: ImageNet weights for the backbone (``weights.converters.resnet_imagenet``): a torchvision
            ResNet state dict (``.pth``, ``weights_only=True``, ``fc.*`` dropped) for the torchvision layout, or
            Keras's ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` (old ``res2a_branch2a`` or new
            ``conv2_block1_1_conv`` names; ResNet-50 / 101) for either layout, stem included.
        normalisation: the input normalisation: ``delg`` (DELF / DELG's RGB ``(x - 128) / 128``), ``imagenet``
            (torchvision's mean / std), or ``auto``: ``imagenet`` for a torchvision ``.pth`` in ``imagenet``,
            else ``delg`` (as DELF's TF training feeds ``(x - 128) / 128`` to its Keras ImageNet init). A
            run that continues one trained with ImageNet normalisation (``init``, ``stage_init``) sets it.
    """

    preset: str = "delg-r50"
    arch: DELGConf | None = None
    init: str | None = None
    imagenet: str | None = None
    normalisation: Literal["auto", "delg", "imagenet"] = "auto"

    @property
    def resolved(self) -> DELGConf:
        """The architecture: ``arch``, else the preset's."""
        if self.arch is not None:
            return self.arch
        if self.preset not in PRESETS:
            raise ConfError(f"model.preset: unknown {self.preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[self.preset]

    @property
    def preprocessing(self) -> Preprocessing:
        """``weights.records.IMAGENET_RGB`` or ``DELG_RGB`` (see ``normalisation``)."""
        torchvision_file = self.imagenet is not None and not is_keras_file(self.imagenet)
        imagenet = self.normalisation == "imagenet" or (self.normalisation == "auto" and torchvision_file)
        return IMAGENET_RGB if imagenet else DELG_RGB


@dataclass(frozen=True)
class DataConf:
    """A GLDv2 train folder (``data.world.gldv2_layout``) split per class, and the training augmentation.

    Attributes:
        root: the folder (``train.csv``, ``train_clean.csv``, images extracted or in ``images_NNN.tar``).
        index: a folder where ``visloc data gldv2 prepare`` wrote its index: labels, split and locations come
            from it (images read straight from the tars by offset; ``root``, ``clean``, ``val_fraction`` and
            ``split_seed`` are then unused). Empty: read ``root`` itself.
        clean: use ``train_clean.csv``'s labels when present (GLDv2-clean), else ``train.csv``'s.
        verify_md5: check every tar against its md5 file when opening (hours on the full GLDv2).
        val_fraction: per class, ``max(1, int(val_fraction * n))`` images go to validation (DELF's split).
        split_seed: seed of the per-class shuffle.
        image_size: side of the square training images (and of the validation images).
        augment: random crop of ``sample_distorted_bounding_box``'s kind (``area_range``, ``aspect_range``,
            ``min_object_covered``), then a resize to ``image_size`` squared (aspect distorted), as TF.
        flip: random horizontal flips (TF: off).
        color_jitter: brightness / contrast / saturation jitter strength in ``[0, 1)`` (TF: 0, off).
        num_workers: DataLoader workers per process.
        seed: seed of the augmentation (drawn per image, epoch and index).
    """

    root: str = ""
    index: str = ""
    clean: bool = True
    verify_md5: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    image_size: int = 512
    augment: bool = True
    area_range: tuple[float, ...] = (0.08, 1.0)
    aspect_range: tuple[float, ...] = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    flip: bool = False
    color_jitter: float = 0.0
    num_workers: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ArcFaceConf:
    """DELG's cosine classifier (``models.heads.arcface.ArcFaceHead``); ``scale`` None: sqrt(global_dim)."""

    margin: float = 0.1
    scale: float | None = None
    learn_scale: bool = False
    sub_centers: int = 1


@dataclass(frozen=True)
class LossConf:
    """DELG's weights: ``total = arcface + attention_weight * attention + reconstruction_weight * mse``."""

    attention_weight: float = 1.0
    reconstruction_weight: float = 10.0


@dataclass(frozen=True)
class ScheduleConf:
    """SGD with momentum; ``decay`` linear: ``lr * (1 - step / max_steps)`` times the core's warm-up."""

    momentum: float = 0.9
    decay: Literal["linear", "none"] = "linear"
    grad_clip: float = 10.0  # global gradient L2 norm (TF: 10); 0: off


@dataclass(frozen=True)
class ValConf:
    """Validation every ``every`` optimiser steps on global rank zero (``validation``).

    Attributes:
        every: steps between validations (0: never).
        at_start: also before the first step of a fresh run (the untrained model's numbers).
        batch_size: images per forward pass.
        max_images: classification accuracy on the first N images of the per-class validation split (0: all).
        retrieval_root: a Revisited-style folder (``jpg/`` and one ``gnd_*.pkl``) for the retrieval mAP; None:
            no retrieval validation.
        retrieval_gnd: the ground-truth file's name in it (None: the only ``gnd_*.pkl`` / ``gnd*.json``).
        retrieval_size: longest image side of the single-scale descriptor (queries cropped to their box at
            the scale of the full query image).
        max_queries: the first N queries (0: all).
        max_database: database images: every image the kept queries label, then the others in order up to
            N in all (0: all).
    """

    every: int = 1000
    at_start: bool = True
    batch_size: int = 16
    max_images: int = 1000
    retrieval_root: str | None = None
    retrieval_gnd: str | None = None
    retrieval_size: int = 512
    max_queries: int = 0
    max_database: int = 0


@dataclass(frozen=True)
class GenerateConf:
    """Synthetic landmarks that ``prepare`` writes into ``data.root`` and ``val.retrieval_root`` (tests, demos).

    ``classes`` > 0 turns it on; the classifier then has ``classes`` outputs without reading the data first.
    """

    classes: int = 0
    images_per_class: int = 6
    size: int = 96
    queries_per_class: int = 1
    database_per_class: int = 3
    seed: int = 0


def _delg_train() -> OptimConf:
    return OptimConf(max_steps=500_000, batch_size=32, lr=0.01, checkpoint_every=1000, log_every=100)


@dataclass(frozen=True)
class DELGTrainConf:
    """The ``delg`` recipe; ``run_dir`` receives checkpoints, logs, ``relabeling.csv`` and ``delg.pt``."""

    run_dir: str = "outputs/train/delg"
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    arcface: ArcFaceConf = field(default_factory=ArcFaceConf)
    loss: LossConf = field(default_factory=LossConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    val: ValConf = field(default_factory=ValConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    train: OptimConf = field(default_factory=_delg_train)


@dataclass(frozen=True)
class DELFTrainConf:
    """The ``delf`` recipe, one stage per run (``stage``); exports ``delf_<stage>.pt``.

    ``tuning`` fine-tunes the backbone with a linear classifier on the average-pooled ``block3``; ``attn``
    freezes the backbone (BatchNorm in eval mode too) and trains the attention head with its classifier,
    starting from ``stage_init``: the ``delf_tuning.pt`` of a tuning run (a different ``run_dir``).
    """

    run_dir: str = "outputs/train/delf"
    stage: Stage = "tuning"
    stage_init: str | None = None
    model: ModelConf = field(default_factory=lambda: ModelConf(preset="delf-r50"))
    data: DataConf = field(default_factory=DataConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    val: ValConf = field(default_factory=ValConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    train: OptimConf = field(default_factory=_delg_train)


def _range(where: str, values: tuple[float, ...], low: float, high: float) -> None:
    if len(values) != 2 or not low < values[0] <= values[1] <= high:
        raise ConfError(f"{where}: expected [min, max] with {low} < min <= max <= {high}, got {list(values)}")


def _check_data(d: DataConf) -> None:
    if not d.root and not d.index:
        raise ConfError("data.root: the GLDv2 train folder (train.csv, train_clean.csv, images or tars), "
                        "or data.index: the folder of its prepared index (visloc data gldv2 prepare)")
    if not 0 <= d.val_fraction < 1:
        raise ConfError(f"data.val_fraction: expected in [0, 1), got {d.val_fraction}")
    if d.image_size < 32:
        raise ConfError(f"data.image_size: expected >= 32 pixels (one cell of stride 32), got {d.image_size}")
    _range("data.area_range", d.area_range, 0.0, 1.0)
    _range("data.aspect_range", d.aspect_range, 0.0, math.inf)
    if not 0 <= d.min_object_covered <= 1:
        raise ConfError(f"data.min_object_covered: expected in [0, 1], got {d.min_object_covered}")
    if not 0 <= d.color_jitter < 1:
        raise ConfError(f"data.color_jitter: expected in [0, 1), got {d.color_jitter}")
    if d.num_workers < 0:
        raise ConfError(f"data.num_workers: expected >= 0, got {d.num_workers}")


def _check_val(v: ValConf) -> None:
    for name in ("every", "max_images", "max_queries", "max_database"):
        if getattr(v, name) < 0:
            raise ConfError(f"val.{name}: expected >= 0, got {getattr(v, name)}")
    if v.batch_size < 1:
        raise ConfError(f"val.batch_size: expected >= 1, got {v.batch_size}")
    if v.retrieval_size < 32:
        raise ConfError(f"val.retrieval_size: expected >= 32 pixels, got {v.retrieval_size}")


def _check_common(model: ModelConf, data: DataConf, schedule: ScheduleConf, val: ValConf, generate: GenerateConf,
                  train: OptimConf) -> DELGConf:
    arch = model.resolved
    if model.init and model.imagenet:
        raise ConfError("model: give init (a visloc checkpoint) or imagenet (a backbone file), not both")
    if model.imagenet and arch.layout != "torchvision" and not is_keras_file(model.imagenet):
        raise ConfError(f"model.imagenet: a torchvision .pth fits the torchvision layout, the model has layout "
                        f"{arch.layout} (give Keras's resnet50 ..._notop.h5 for it)")
    if model.imagenet and is_keras_file(model.imagenet) and arch.depth not in (50, 101):
        raise ConfError(f"model.imagenet: Keras ImageNet weights exist for ResNet-50 / 101, the model is "
                        f"ResNet-{arch.depth}")
    g = generate
    if g.classes < 0 or g.classes == 1 or (g.classes and min(g.images_per_class, g.size) < 2):
        raise ConfError(f"generate: classes 0 (off) or >= 2, images_per_class >= 2, size >= 2; got {g}")
    _check_data(data)
    if not 0 <= schedule.momentum < 1:
        raise ConfError(f"schedule.momentum: expected in [0, 1), got {schedule.momentum}")
    if not schedule.grad_clip >= 0:
        raise ConfError(f"schedule.grad_clip: expected >= 0, got {schedule.grad_clip}")
    _check_val(val)
    check_optim(train)
    return arch


def check_delg(conf: DELGTrainConf) -> DELGTrainConf:
    """Raise ``ConfError`` for values no ``delg`` run can use (naming the field); return ``conf``."""
    arch = _check_common(conf.model, conf.data, conf.schedule, conf.val, conf.generate, conf.train)
    if arch.global_dim == 0:
        raise ConfError("model: the delg recipe needs a global head (global_dim > 0); DELF trains with recipe delf")
    a = conf.arcface
    if not 0 <= a.margin < math.pi / 2:
        raise ConfError(f"arcface.margin: expected radians in [0, pi/2), got {a.margin}")
    if a.scale is not None and not a.scale > 0:
        raise ConfError(f"arcface.scale: expected > 0 (or null: sqrt(global_dim)), got {a.scale}")
    if a.sub_centers < 1:
        raise ConfError(f"arcface.sub_centers: expected >= 1, got {a.sub_centers}")
    for name in ("attention_weight", "reconstruction_weight"):
        if not getattr(conf.loss, name) >= 0:
            raise ConfError(f"loss.{name}: expected >= 0, got {getattr(conf.loss, name)}")
    return conf


def check_delf(conf: DELFTrainConf) -> DELFTrainConf:
    """Raise ``ConfError`` for values no ``delf`` run can use (naming the field); return ``conf``."""
    arch = _check_common(conf.model, conf.data, conf.schedule, conf.val, conf.generate, conf.train)
    if not arch.is_delf:
        raise ConfError(f"model: the delf recipe trains DELF (local_dim 0, global_dim 0), got local_dim "
                        f"{arch.local_dim}, global_dim {arch.global_dim}; DELG trains with recipe delg")
    if conf.stage == "attn":
        if not conf.stage_init:
            raise ConfError("stage_init: stage attn starts from a tuning run's export (delf_tuning.pt); give its path")
        if conf.model.init or conf.model.imagenet:
            raise ConfError("model: stage attn starts from stage_init; model.init and model.imagenet are for tuning")
        if Path(conf.stage_init).resolve().parent == Path(conf.run_dir).resolve():
            raise ConfError(f"run_dir: {conf.run_dir} holds the tuning run; give stage attn its own run_dir")
    elif conf.stage_init:
        raise ConfError("stage_init: only stage attn starts from a tuning export; use model.init for tuning")
    return conf
