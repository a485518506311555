"""Typed, frozen configuration of the ``loftr-coarse`` recipe.

A YAML file (``configs/loftr_coarse.yaml``) holds ``recipe: loftr-coarse`` and the sections below at its
top level; ``train:`` is the core's ``OptimConf``. The learning-rate steps and gradient clipping live
in ``schedule:`` (this recipe's, so the shared ``OptimConf`` of the other recipes is unchanged).
``check_conf`` raises ``ConfError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from visloc.conf import ConfError
from visloc.models.coarse_loftr import PRESETS, CoarseLoFTRConf, CoarseMatchConf
from visloc.train.core import OptimConf, check_optim
from visloc.train.loftr.data import WorldPairsConf
from visloc.train.loftr.losses import LossConf


@dataclass(frozen=True)
class ModelConf:
    """The student: a preset (``models.coarse_loftr.PRESETS``) or a full ``arch``, optionally initialised."""

    preset: str = "s"
    arch: CoarseLoFTRConf | None = None  # overrides the preset when given
    init: str | None = None  # a visloc ``loftr-coarse`` checkpoint to start from (its conf must be ``arch``)

    @property
    def resolved(self) -> CoarseLoFTRConf:
        """The architecture: ``arch``, else the preset's."""
        if self.arch is not None:
            return self.arch
        if self.preset not in PRESETS:
            raise ConfError(f"model.preset: unknown {self.preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[self.preset]


@dataclass(frozen=True)
class DistillConf:
    """Optional teacher (``train.loftr.distill``).

    ``loftr``: a user's LoFTR checkpoint (``path``), coarse level at 1/8, run online on each batch;
    ``total = gt_weight * GT + weight * T^2 KL``. ``aliked-lightglue``: the image matcher ``matcher``
    (``detector-pair``: ALIKED n16 + LightGlue) run once per training pair by ``prepare``; its matches
    become extra positives of the GT term (``gt_weight`` and ``weight`` unused).
    """

    teacher: Literal["none", "loftr", "aliked-lightglue"] = "none"
    path: str | None = None  # the LoFTR checkpoint (outdoor_ds.ckpt layout)
    temperature: float = 5.0
    weight: float = 0.7
    gt_weight: float = 0.3
    subsample: Literal["mean", "pick"] = "mean"  # 1/8 -> 1/16: mean of the 2x2 blocks, or their top-left cell
    matcher: str = "detector-pair"
    matcher_set: tuple[str, ...] = ()  # key=value overrides of the matcher (e.g. extractor_set=...)
    min_score: float = 0.0  # teacher matches below this confidence are ignored
    cache_dir: str | None = None  # default: <run_dir>/teacher


@dataclass(frozen=True)
class ValConf:
    """Validation on held-out pairs every ``every`` optimiser steps, on global rank zero (``validation``)."""

    root: str | None = None  # None: ``data.root`` with split ``val``
    every: int = 500  # 0: never
    num_pairs: int = 0  # the first N pairs (0: all)
    batch_size: int = 4
    ransac_px: float = 4.0  # essential-matrix inlier threshold (px) on the cell centres (quantised to +-r/2)
    at_start: bool = True  # also before the first step of a fresh run


@dataclass(frozen=True)
class ScheduleConf:
    """Step decay on top of ``train.warmup_steps`` (LoFTR: MultiStepLR, gamma 0.5) and gradient-norm clipping."""

    lr_steps: tuple[int, ...] = ()  # optimiser steps after which the rate is multiplied by lr_gamma
    lr_gamma: float = 0.5
    grad_clip: float = 0.5  # max gradient L2 norm (LoFTR 0.5); 0: off


@dataclass(frozen=True)
class GenerateConf:
    """World pairs that ``prepare`` generates into the train / val roots first (0: none; resumable)."""

    train_pairs: int = 0
    val_pairs: int = 0
    width: int = 640
    height: int = 480


@dataclass(frozen=True)
class LoFTRCoarseTrainConf:
    """The ``loftr-coarse`` recipe; ``run_dir`` receives checkpoints, logs, caches and ``loftr_coarse.pt``."""

    run_dir: str = "outputs/train/loftr_coarse"
    data: WorldPairsConf = field(default_factory=lambda: WorldPairsConf(root="outputs/world/pairs_{split}",
                                                                         size=(640, 480)))
    num_workers: int = 0
    generate: GenerateConf = field(default_factory=GenerateConf)
    model: ModelConf = field(default_factory=ModelConf)
    loss: LossConf = field(default_factory=LossConf)
    distill: DistillConf = field(default_factory=DistillConf)
    match: CoarseMatchConf = field(default_factory=CoarseMatchConf)
    val: ValConf = field(default_factory=ValConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    train: OptimConf = field(default_factory=OptimConf)


def _non_negative(where: str, value: float) -> None:
    if not value >= 0:
        raise ConfError(f"{where}: must be >= 0, got {value}")


def _check_loss(lc: LossConf) -> None:
    if lc.type not in ("focal", "bce"):
        raise ConfError(f"loss.type: focal or bce, got {lc.type!r}")
    if not 0 < lc.alpha <= 1:
        raise ConfError(f"loss.alpha: must be in (0, 1], got {lc.alpha}")
    for name in ("gamma", "pos_weight", "neg_weight"):
        _non_negative(f"loss.{name}", getattr(lc, name))


def _check_distill(d: DistillConf, student_resolution: int) -> None:
    if d.teacher not in ("none", "loftr", "aliked-lightglue"):
        raise ConfError(f"distill.teacher: none, loftr or aliked-lightglue, got {d.teacher!r}")
    if d.teacher == "loftr":
        if not d.path:
            raise ConfError("distill.path: the loftr teacher needs a LoFTR checkpoint (outdoor_ds.ckpt)")
        if student_resolution % 8:
            raise ConfError(f"model: a student at resolution {student_resolution} cannot use the 1/8 LoFTR teacher")
    if d.subsample not in ("mean", "pick"):
        raise ConfError(f"distill.subsample: mean or pick, got {d.subsample!r}")
    if not d.temperature > 0:
        raise ConfError(f"distill.temperature: must be > 0, got {d.temperature}")
    for name in ("weight", "gt_weight", "min_score"):
        _non_negative(f"distill.{name}", getattr(d, name))


def _check_schedule(s: ScheduleConf) -> None:
    steps = list(s.lr_steps)
    if any(x < 1 for x in steps) or steps != sorted(set(steps)):
        raise ConfError(f"schedule.lr_steps: increasing optimiser steps >= 1, got {steps}")
    if not 0 < s.lr_gamma <= 1:
        raise ConfError(f"schedule.lr_gamma: must be in (0, 1], got {s.lr_gamma}")
    _non_negative("schedule.grad_clip", s.grad_clip)


def _check_val(v: ValConf) -> None:
    for name in ("every", "num_pairs"):
        if getattr(v, name) < 0:
            raise ConfError(f"val.{name}: must be >= 0, got {getattr(v, name)}")
    if v.batch_size < 1:
        raise ConfError(f"val.batch_size: must be >= 1, got {v.batch_size}")
    if not v.ransac_px > 0:
        raise ConfError(f"val.ransac_px: must be > 0, got {v.ransac_px}")


def check_conf(conf: LoFTRCoarseTrainConf) -> LoFTRCoarseTrainConf:
    """Raise ``ConfError`` for values no run can use (naming the field); return ``conf``."""
    arch = conf.model.resolved
    if conf.data.resolution != arch.resolution:
        raise ConfError(f"data.resolution: {conf.data.resolution} but the model's resolution is {arch.resolution}")
    if not conf.data.root:
        raise ConfError("data.root: the world pairs folder (e.g. outputs/world/pairs_{split})")
    if conf.num_workers < 0:
        raise ConfError(f"num_workers: must be >= 0, got {conf.num_workers}")
    g = conf.generate
    if min(g.train_pairs, g.val_pairs) < 0 or min(g.width, g.height) < 16:
        raise ConfError(f"generate: pair counts >= 0 and an image size >= 16 px, got {g}")
    _check_loss(conf.loss)
    _check_distill(conf.distill, arch.resolution)
    _check_val(conf.val)
    _check_schedule(conf.schedule)
    check_optim(conf.train)
    return conf
