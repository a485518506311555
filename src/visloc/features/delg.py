"""``delg``, ``delg-global`` and ``delf``: DELF / DELG features over an image pyramid (torch).

- ``delg``: local features (attention-selected cells of 7 scales, DELG's autoencoder code, L2) and the
  multi-scale global descriptor (3 scales) from one pyramid: the scales in both sets run once.
- ``delg-global``: the global descriptor alone (the 3 global scales; the local heads do not run).
- ``delf``: local features alone, described by ``block3`` (1024-d for a ResNet-50) L2-normalised,
  then, with a ``pca`` file (``features.delf_pca``), PCA-whitened to its dimension and L2 again.

The pyramid, the selection (threshold, NMS, top-k), the keypoint geometry and the aggregation are
``features.delg_pipeline``'s, shared with ``delg-onnx``. Weights: a visloc checkpoint
(``weights.checkpoint.save_model(path, "delg", model)``), or with ``allow_random`` a random network of
``preset`` seeded with 0 (tests and benchmarks); nothing is downloaded. The input is normalised as
the weights expect (``normalisation``; DELF / DELG: RGB ``(255 x - 128) / 128``). The extractor folds
the BatchNorms into the convolutions (same outputs up to rounding), as onnxruntime does, and runs in
the ``channels_last`` memory format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.delf_pca import apply_delf_pca, load_delf_pca
from visloc.features.delg_pipeline import GLOBAL_SCALES, LOCAL_SCALES, LevelOutput, PyramidConf, extract_pyramid
from visloc.models.backbones import fuse_batchnorm
from visloc.models.delg import DELG, DELGConf, resolve_preset
from visloc.models.resnet_delg import DEPTHS, BasicBlock, Bottleneck, ReceptiveField, ResNetBackbone, receptive_field
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Features
from visloc.weights.load import WeightsError
from visloc.weights.records import DELG_RGB, IMAGENET_RGB, Preprocessing, check_shipped, installed_path

Normalisation = Literal["delg", "imagenet"]
NORMALISATIONS: dict[str, Preprocessing] = {"delg": DELG_RGB, "imagenet": IMAGENET_RGB}


@dataclass(frozen=True)
class DELGNetConf:
    """The network and its input, shared by the DELF / DELG extractors.

    Attributes:
        weights: a visloc ``delg`` checkpoint; None: ``preset`` with random weights (needs ``allow_random``).
        preset: the architecture of the random network (``models.delg.PRESETS``); ignored with ``weights``.
        allow_random: without weights, build a random network (seed 0) instead of raising.
        normalisation: ``delg`` (``(255 x - 128) / 128``) or ``imagenet`` (torchvision's mean / std); None:
            what the checkpoint records (``extras["normalisation"]``), else ``delg``.
        resize_max: longest edge before extraction, downscale only (DELG: 1024).
        resize_to: ``(W, H)``: exact size, overrides ``resize_max``.
    """

    weights: str | None = None
    preset: str = "delg-r50"
    allow_random: bool = False
    normalisation: Normalisation | None = None
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        ranges.image_size(self)
        for name in ("scales", "global_scales"):
            if hasattr(self, name):
                ranges.scales(self, name)
        if isinstance(self, DELGLocalConf):
            ranges.keypoint_budget(self, unlimited=False)
            ranges.at_least(self, 0, "attention_threshold")
            ranges.between(self, 1e-6, 1, "iou_threshold")


@dataclass(frozen=True)
class DELGGlobalConf(DELGNetConf):
    """``delg-global``: ``global_scales`` of the pyramid (per-scale L2, summed, L2)."""

    global_scales: tuple[float, ...] = GLOBAL_SCALES


@dataclass(frozen=True)
class DELGLocalConf(DELGNetConf):
    """The local features' settings (``features.delg_pipeline`` for the selection).

    Attributes:
        scales: the pyramid's scales.
        attention_threshold: keep cells whose attention is ``>=`` it (an absolute softplus score tied to
            the weights: 454.6 for r50delg_gldv2clean, 357.48 r101 gldv2clean, 175 GLDv1); None: the
            threshold the checkpoint records (``extras["attention_threshold"]``), else none, i.e. top-k
            by score; 0 forces top-k (every score is >= 0).
        max_num_keypoints: at most this many features per image.
        iou_threshold: NMS IoU on the receptive-field boxes; 1.0 (DELF's) suppresses nothing.
    """

    scales: tuple[float, ...] = LOCAL_SCALES
    attention_threshold: float | None = None
    max_num_keypoints: int = 1000
    iou_threshold: float = 1.0


@dataclass(frozen=True)
class DELFConf(DELGLocalConf):
    """``delf``: the local settings and ``pca``.

    Attributes:
        pca: a DELF PCA file (``features.delf_pca.save_delf_pca``); None: the raw ``block3`` descriptors
            (L2-normalised).
    """

    preset: str = "delf-r50"
    pca: str | None = None


@dataclass(frozen=True)
class DELGExtractorConf(DELGLocalConf):
    """``delg``: the local settings and the global scales."""

    global_scales: tuple[float, ...] = GLOBAL_SCALES


#: the weights record of the model the DELG extractors use when no ``weights`` are given
SHIPPED = "delg-world"


def default_weights(weights: str | None, allow_random: bool = False) -> str | None:
    """``weights``, else the shipped model (sha256 checked) when installed, else None.

    With ``allow_random`` (a random network is asked for) no shipped model is taken.
    """
    if weights is not None or allow_random:
        return weights
    path = installed_path(SHIPPED)
    return None if path is None else str(check_shipped(SHIPPED, path))


def load_delg(weights: str | None, preset: str = "delg-r50", allow_random: bool = False
              ) -> tuple[DELG, Mapping[str, Any]]:
    """The network of a visloc ``delg`` checkpoint and what it records besides (``extras``), eval mode.

    Without ``weights``: with ``allow_random``, ``preset``'s network with random weights drawn from seed 0
    (the same network in every process); else the shipped ``delg-world`` model (``SHIPPED``, sha256 checked)
    when installed, else a ``WeightsError``.
    """
    weights = default_weights(weights, allow_random)
    if weights is not None:
        from visloc.weights.checkpoint import build_model, load_model_record

        record = load_model_record(weights, "delg")
        return build_model(record, DELGConf, DELG), dict(record.extras)
    if not allow_random:
        raise WeightsError("delg: no weights and no shipped model in this install; give a visloc delg checkpoint "
                           "(weights=FILE, or --weights FILE) or allow a random network (allow_random=true, or "
                           "--allow-random)")
    arch = resolve_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DELG(arch).eval(), {}


def fold_batchnorms(model: DELG) -> DELG:
    """Fold every BatchNorm of ``model`` (eval mode) into the convolution before it, in place."""
    if model.training:
        raise ValueError("fold_batchnorms: the model must be in eval mode")
    fuse_batchnorm(model)  # the shortcuts' Sequential(conv, bn)
    pairs: list[tuple[nn.Module, str, str]] = []
    for m in model.modules():
        if isinstance(m, ResNetBackbone):
            pairs.append((m, "conv1", "bn1"))
        elif isinstance(m, (Bottleneck, BasicBlock)):
            pairs += [(m, f"conv{k}", f"bn{k}") for k in (1, 2, 3) if hasattr(m, f"bn{k}")]
    pairs.append((model.attention, "conv1", "bn"))
    for parent, conv, bn in pairs:
        c, b = getattr(parent, conv), getattr(parent, bn)
        if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            setattr(parent, conv, fuse_conv_bn_eval(c, b))
            setattr(parent, bn, nn.Identity())
    return model


def normalisation_of(conf: DELGNetConf, extras: Mapping[str, Any]) -> Preprocessing:
    """The input normalisation: the conf's, else the checkpoint's record, else DELG's."""
    name = conf.normalisation or extras.get("normalisation") or "delg"
    if name not in NORMALISATIONS:
        raise WeightsError(f"{conf.weights}: normalisation {name!r} is not one of {sorted(NORMALISATIONS)}")
    return NORMALISATIONS[name]


def pyramid_conf(conf: DELGNetConf, extras: Mapping[str, Any]) -> PyramidConf:
    """The ``PyramidConf`` of an extractor conf (threshold: the conf's, else the checkpoint's, else None).

    Local scales for a ``DELGLocalConf``, global scales for a conf with ``global_scales``.
    """
    global_scales = tuple(getattr(conf, "global_scales", ()))
    if not isinstance(conf, DELGLocalConf):
        return PyramidConf((), global_scales)
    threshold = conf.attention_threshold
    if threshold is None and extras.get("attention_threshold") is not None:
        threshold = float(extras["attention_threshold"])
    return PyramidConf(conf.scales, global_scales, threshold, conf.max_num_keypoints, conf.iou_threshold)


class DELGBase(Extractor):
    """A DELF / DELG extractor: normalisation, then ``extract_pyramid`` with this class's network call."""

    input_spec = IMAGE_RGB
    #: ``delg`` (local + global), ``global`` or ``delf`` (local, block3 descriptors)
    mode: ClassVar[Literal["delg", "global", "delf"]] = "delg"

    def setup(self, arch: DELGConf, extras: Mapping[str, Any]) -> None:
        """Settings derived from the conf, the network's ``arch`` and the checkpoint's ``extras``."""
        conf = self.conf
        if self.mode != "delf" and arch.global_dim == 0:
            raise ConfError(f"{self.mode}: the network has no global head (a DELF network): use the delf extractor")
        self.arch = arch
        norm = normalisation_of(conf, extras)
        mean, std = norm.normalisation()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.pyramid = pyramid_conf(conf, extras)
        self.pca = load_delf_pca(conf.pca) if getattr(conf, "pca", None) else None
        raw_dim = DEPTHS_C3[arch.depth] if self.mode == "delf" else (arch.local_dim or DEPTHS_C3[arch.depth])
        if self.pca is not None and self.pca["mean"].shape[0] != raw_dim:
            raise WeightsError(f"{conf.pca}: a PCA of {self.pca['mean'].shape[0]}-d descriptors, the network's "
                               f"block3 has {raw_dim}")
        self._descriptor_dim = 0 if self.mode == "global" else (
            int(self.pca["projection"].shape[0]) if self.pca is not None else raw_dim)

    @property
    def descriptor_dim(self) -> int:
        """D of the local descriptors (0 for ``delg-global``)."""
        return self._descriptor_dim

    @property
    def global_dim(self) -> int:
        """G of the global descriptor (0 for ``delf``)."""
        return 0 if self.mode == "delf" else self.arch.global_dim

    def describe(self, raw: torch.Tensor) -> torch.Tensor:
        """Selected raw descriptors ``[N, C]`` -> final ``[N, D]``: L2, or DELF's PCA post-processing."""
        return F.normalize(raw, dim=-1) if self.pca is None else apply_delf_pca(raw, self.pca)

    def net(self, image: torch.Tensor, local: bool, global_: bool) -> LevelOutput:  # pragma: no cover - abstract
        """The network at one scale (``delg_pipeline.NetFn``)."""
        raise NotImplementedError

    def receptive_field(self, side: int) -> ReceptiveField:
        """The local features' receptive field along an axis of ``side`` pixels."""
        return receptive_field(self.arch.depth, self.arch.layout, side)

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Features of ``image [B, C, H, W]`` in ``[0, 1]``; see ``features.base`` and ``delg_pipeline``."""
        image = self.check_image(image)
        x = (image.float() - cast(torch.Tensor, self.mean)) / cast(torch.Tensor, self.std)
        return extract_pyramid(self.net, x, self.pyramid, self.receptive_field, self.describe, self.descriptor_dim,
                               self.global_dim)


#: block3's channels per depth (``DELG.block3_channels``), known without building the network
DEPTHS_C3 = {d: 1024 if DEPTHS[d][1] else 256 for d in DEPTHS}


class DELGExtractor(DELGBase):
    """DELF / DELG features with the network run by torch (``mode`` chooses which, module docstring)."""

    def __init__(self, conf: DELGNetConf) -> None:
        super().__init__(conf)
        model, extras = load_delg(conf.weights, conf.preset, conf.allow_random)
        self.setup(model.conf, extras)
        # channels_last: oneDNN's native layout, about 10 % faster on this CPU
        self.model = fold_batchnorms(model.eval()).to(memory_format=torch.channels_last)
        self.eval()

    def net(self, image: torch.Tensor, local: bool, global_: bool) -> LevelOutput:
        """``DELG.forward`` at one scale; conv5 runs only for a global scale."""
        out = self.model(image.contiguous(memory_format=torch.channels_last), local=local, global_=global_)
        descriptors = (out.block3 if self.mode == "delf" else out.local) if local else None
        return LevelOutput(out.attention if local else None, descriptors, out.global_descriptor if global_ else None)


class DELGGlobal(DELGExtractor):
    """``delg-global``: the multi-scale global descriptor only."""

    mode = "global"


class DELF(DELGExtractor):
    """``delf``: local features described by ``block3`` (+ PCA), no global descriptor."""

    mode = "delf"


def checkpoint_arch(weights: str | None, preset: str) -> DELGConf | None:
    """The architecture of ``weights`` (read memory-mapped) or of ``preset``; None if unreadable."""
    if weights is None:
        try:
            return resolve_preset(preset)
        except ConfError:
            return None
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        return DELGConf(**ckpt["conf"])
    except Exception:  # an unreadable file is reported when the extractor is built
        return None


def delg_capabilities(mode: str) -> Any:
    """The ``capabilities`` of the ``mode`` extractor: outputs, descriptor family, needs, files."""

    def capabilities(conf: DELGNetConf) -> Capabilities:
        outputs = {"delg": {"local", "global"}, "global": {"global"}, "delf": {"local"}}[mode]
        onnx = getattr(conf, "onnx", None)
        shipped = None if onnx or conf.allow_random else installed_path(SHIPPED)  # hash checked when built
        weights = conf.weights or (str(shipped) if shipped else None)
        files = tuple(f for f in (weights, getattr(conf, "pca", None), onnx) if f)
        needs = frozenset() if weights or conf.allow_random or onnx else {"weights"}
        # a given ONNX file fixes its own architecture (read when built): the family's dimension is unknown here
        arch = None if onnx and not conf.weights else checkpoint_arch(weights, conf.preset)
        family = None
        if mode == "delg":
            family = f"delg-{arch.local_dim or DEPTHS_C3[arch.depth]}" if arch else "delg"
        elif mode == "delf":
            pca = getattr(conf, "pca", None)
            dim = _pca_dim(pca) if pca else (DEPTHS_C3[arch.depth] if arch else None)
            family = f"delf-{dim}" if dim else "delf"
        return Capabilities(frozenset(outputs), family, needs=frozenset(needs), weights=files)

    return capabilities


def _pca_dim(path: str) -> int | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["projection"].shape[0])
    except Exception:  # reported when the extractor is built
        return None


EXTRACTORS.register("delg", DELGExtractorConf(), DELGExtractor, capabilities=delg_capabilities("delg"))
EXTRACTORS.register("delg-global", DELGGlobalConf(), DELGGlobal, capabilities=delg_capabilities("global"))
EXTRACTORS.register("delf", DELFConf(), DELF, capabilities=delg_capabilities("delf"))

__all__ = ["DELF", "SHIPPED", "DELFConf", "DELGBase", "DELGExtractor", "DELGExtractorConf", "DELGGlobal",
           "DELGGlobalConf", "DELGLocalConf", "DELGNetConf", "NORMALISATIONS", "checkpoint_arch", "default_weights",
           "delg_capabilities", "fold_batchnorms", "load_delg", "normalisation_of", "pyramid_conf"]
