"""Event-VPR (Kong et al., arXiv 2011.03290): an event window's dense representation -> a global descriptor.

The network after the representation, as the paper's abstract and the project's issue 14 describe it:

1. the representation ``[B, C, H, W]`` (``voxel-grid`` with ``C = bins``, or ``est`` with ``C = 2 bins``;
   computed outside this module, ``events.vpr`` composes the two);
2. a centre crop to the largest square (``min(H, W)`` on a side, offsets ``(H - side) // 2`` and
   ``(W - side) // 2``) and a bilinear resize (``align_corners=False``, no antialiasing) to
   ``input_size`` (224), as EST's classifier crops (EST resizes with nearest, which aliases);
3. ResNet-34 (torchvision's layout, ``models.resnet_delg.ResNetBackbone``) whose first conv takes the
   ``C`` channels: random (torchvision's initialisation) by default; ImageNet weights from a user's file
   go through ``weights.converters.resnet_imagenet.load_imagenet_backbone(model, path, stem="mean")``,
   which adapts the RGB filters to ``C`` channels (``models.backbones.adapt_rgb_filters``);
4. NetVLAD (``models.heads.NetVLAD``, 32 clusters x 512 = 16,384-D, intra- and L2-normalised) on the
   stride-32 conv5 map (7 x 7 at 224);
5. optionally PCA whitening (``models.heads.PCAWhitening`` to ``whiten_dim``, fitted later from
   descriptors), then L2.

No input normalisation is applied: the representation's values go in as they are. Everything here
exports to ONNX (``export_spec``: dynamic batch, the sensor's fixed ``H, W``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.jit import TracerWarning, is_tracing  # pyright: ignore[reportPrivateImportUsage]  # public, not in __all__

from visloc.conf import ConfError
from visloc.errors import InputError
from visloc.export.spec import ExportSpec
from visloc.models.heads.netvlad import NetVLAD
from visloc.models.heads.whitening import PCAWhitening
from visloc.models.resnet_delg import ResNetBackbone

#: ONNX graph of ``EventVPR.forward`` (``export_spec``)
ONNX_INPUT = "representation"
ONNX_OUTPUT = "global_descriptor"
DEPTH = 34
FEATURE_DIM = 512  # ResNet-34's conv5 channels
STRIDE = 32
#: the shipped weights (``weights.records``): trained on the built-in world's event drives (docs/event_vpr.md)
SHIPPED = "event-vpr-world"


@dataclass(frozen=True)
class EventVPRConf:
    """Architecture of an Event-VPR network.

    Attributes:
        representation: ``est`` (``2 bins`` channels) or ``voxel-grid`` (``bins`` channels).
        bins: the representation's temporal bins (``>= 2`` for ``est``).
        input_size: side of the square the representation is resized to, in pixels (>= 32).
        num_clusters: NetVLAD's K; the descriptor has ``K * 512`` dimensions before whitening.
        whiten_dim: PCA whitening's output size; 0: no whitening.
    """

    representation: Literal["est", "voxel-grid"] = "est"
    bins: int = 9
    input_size: int = 224
    num_clusters: int = 32
    whiten_dim: int = 0

    def __post_init__(self) -> None:
        least = 2 if self.representation == "est" else 1
        if self.bins < least:
            raise ConfError(f"bins: {self.representation} needs >= {least}, got {self.bins}")
        if self.input_size < STRIDE:
            raise ConfError(f"input_size: must be >= {STRIDE} (ResNet's stride), got {self.input_size}")
        if self.num_clusters < 1:
            raise ConfError(f"num_clusters: must be >= 1, got {self.num_clusters}")
        if not 0 <= self.whiten_dim <= self.num_clusters * FEATURE_DIM:
            raise ConfError(f"whiten_dim: must be in [0, {self.num_clusters * FEATURE_DIM}], got {self.whiten_dim}")

    @property
    def channels(self) -> int:
        """The representation's channels ``C``: ``2 bins`` for ``est``, ``bins`` for ``voxel-grid``."""
        return 2 * self.bins if self.representation == "est" else self.bins

    @property
    def out_dim(self) -> int:
        """The descriptor's size: ``whiten_dim``, else ``num_clusters * 512``."""
        return self.whiten_dim or self.num_clusters * FEATURE_DIM


def centre_crop_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, size, size]``: the centred ``min(H, W)`` square, resized bilinearly."""
    with warnings.catch_warnings():  # traced, H and W become constants: the graph has fixed H, W on purpose
        warnings.simplefilter("ignore", TracerWarning)
        h, w = int(x.shape[-2]), int(x.shape[-1])
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class EventVPR(nn.Module):
    """A representation ``[B, C, H, W]`` -> L2-normalised global descriptors ``[B, D]`` (module docstring).

    Args:
        conf: the architecture (``EventVPRConf``); ``C = conf.channels``, ``D = conf.out_dim``.
    """

    def __init__(self, conf: EventVPRConf | None = None) -> None:
        super().__init__()
        self.conf = conf if conf is not None else EventVPRConf()
        backbone = ResNetBackbone(DEPTH, "torchvision")
        backbone.conv1 = nn.Conv2d(self.conf.channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        self.backbone = backbone
        self.pool = NetVLAD(self.conf.num_clusters, FEATURE_DIM, normalize_input=True)
        wd = self.conf.whiten_dim
        self.whiten = PCAWhitening(self.pool.out_dim, wd) if wd else None

    @property
    def out_dim(self) -> int:
        """``D``."""
        return self.conf.out_dim

    def features(self, representation: torch.Tensor) -> torch.Tensor:
        """Crop, resize and ResNet-34: ``[B, C, H, W]`` -> conv5 ``[B, 512, s/32, s/32]`` (``s = input_size``)."""
        return self.backbone(centre_crop_resize(representation, self.conf.input_size))

    def aggregate(self, features: torch.Tensor) -> torch.Tensor:
        """conv5 maps -> descriptors ``[B, D]``: NetVLAD, then whitening (and L2) when the conf has it."""
        desc = self.pool(features)
        return self.whiten(desc) if self.whiten is not None else desc

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        """Describe ``representation [B, C, H, W]`` (float32) with ``[B, D]`` L2-normalised descriptors."""
        if not is_tracing() and (representation.dim() != 4 or representation.shape[1] != self.conf.channels):
            raise ValueError(f"representation: expected [B, {self.conf.channels}, H, W] ({self.conf.representation}, "
                             f"{self.conf.bins} bins), got shape {tuple(representation.shape)}")
        return self.aggregate(self.features(representation))

    def export_spec(self, batch: int = 2, height: int = 260, width: int = 346, dynamic: bool = True,
                    seed: int = 0) -> ExportSpec:
        """ONNX spec of ``forward``: ``representation [B, C, H, W]`` -> ``global_descriptor [B, D]``.

        Args:
            batch: the example's ``B``.
            height: ``H``, the sensor's rows (fixed in the graph; MVSEC's DAVIS 346 has 260).
            width: ``W``, its columns (346).
            dynamic: dynamic batch; else static shapes.
            seed: seed of the random example inputs (uniform in [0, 1)).

        The parity check also runs ``B + 1`` representations when dynamic (other values of the
        example's shape when static).
        """
        if batch < 1 or height < 1 or width < 1:
            raise InputError(f"event-vpr export: need batch, height and width >= 1, got {batch}x{height}x{width}")
        gen = torch.Generator().manual_seed(seed)
        c = self.conf.channels
        sizes = (batch, batch + 1 if dynamic else batch)
        inputs = [{ONNX_INPUT: torch.rand(b, c, height, width, generator=gen)} for b in sizes]
        axes = {ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}} if dynamic else None
        return ExportSpec(inputs[0], (ONNX_OUTPUT,), axes, check_inputs=inputs[1:], atol=1e-4)


__all__ = ["DEPTH", "FEATURE_DIM", "ONNX_INPUT", "ONNX_OUTPUT", "EventVPR", "EventVPRConf", "centre_crop_resize"]
