"""DELF (Noh et al., ICCV 2017) and DELG (Cao et al., ECCV 2020): attentive local and GeM global features.

One network, as tensorflow/models ``delf/python/training/model/delf_model.py`` and ``delg_model.py`` build it:

- a ResNet (``models.resnet_delg``; DELF / DELG's Keras layout or torchvision's);
- ``block3``: the conv4 output subsampled by 2 (stride 32, TF's ``block3_strides``);
- DELG's autoencoder on ``block3.detach()``: 1x1 conv C3 -> ``local_dim`` (linear: the local descriptor),
  1x1 conv back to C3 + ReLU (the reconstruction);
- the attention head on the reconstruction (DELG) or on ``block3.detach()`` (DELF): 1x1 conv C3 -> 512,
  BatchNorm, ReLU, 1x1 conv 512 -> 1, softplus (the score DELF thresholds);
- DELG's global head on conv5: GeM with a fixed p = 3, then a fully connected layer C4 -> ``global_dim``
  with bias, L2-normalised.

The stop-gradients are TF's: only the global loss (or DELF's fine-tuning loss) trains the backbone; the
attention and reconstruction losses train their heads. The classifiers (ArcFace, the attention classifier)
are training parts (``train.delg``), not part of the network, as the official exports drop them too.

Input: ``[B, 3, H, W]`` RGB normalised by the weights' preprocessing (``weights.records``: DELF / DELG's
``(255 x - 128) / 128``; ImageNet mean / std for a torchvision initialisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visloc.conf import ConfError
from visloc.models.heads.gem import GeM
from visloc.models.resnet_delg import DEPTHS, TF_BN_EPS, ReceptiveField, ResNetBackbone, check_backbone, receptive_field


@dataclass(frozen=True)
class DELGConf:
    """Architecture of a DELF / DELG network.

    Attributes:
        depth: ResNet depth (18, 34, 50, 101).
        layout: ``tf`` (DELF / DELG's Keras ResNet, 50 / 101) or ``torchvision``.
        attention_dim: hidden channels of the attention head.
        local_dim: autoencoder code size, the local descriptor's ``D``; 0: no autoencoder (DELF: the local
            descriptor is ``block3`` itself, reduced by PCA at extraction).
        global_dim: embedding size after GeM; 0: no global head (DELF).
        gem_p: GeM exponent (fixed, as DELG).
    """

    depth: int = 50
    layout: Literal["tf", "torchvision"] = "tf"
    attention_dim: int = 512
    local_dim: int = 128
    global_dim: int = 2048
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        check_backbone(self.depth, self.layout)
        if self.attention_dim < 1:
            raise ConfError(f"attention_dim: expected >= 1, got {self.attention_dim}")
        if self.local_dim < 0 or self.global_dim < 0:
            raise ConfError(f"local_dim and global_dim: expected >= 0, got {self.local_dim}, {self.global_dim}")
        if not self.gem_p > 0:
            raise ConfError(f"gem_p: expected > 0, got {self.gem_p}")

    @property
    def is_delf(self) -> bool:
        """No autoencoder and no global head: DELF."""
        return self.local_dim == 0 and self.global_dim == 0


PRESETS: dict[str, DELGConf] = {
    "delg-r50": DELGConf(50, "tf"),
    "delg-r101": DELGConf(101, "tf"),
    "delg-r50-tv": DELGConf(50, "torchvision"),
    "delf-r50": DELGConf(50, "tf", local_dim=0, global_dim=0),
    # small backbones for training on a CPU (conv4 has 256 channels, conv5 512)
    "delg-r18": DELGConf(18, "torchvision", attention_dim=256, local_dim=128, global_dim=512),
    "delg-r34": DELGConf(34, "torchvision", attention_dim=256, local_dim=128, global_dim=512),
}


def resolve_preset(name: str) -> DELGConf:
    """``PRESETS[name]``; ``ConfError`` listing the known ones."""
    if name not in PRESETS:
        raise ConfError(f"DELG preset: unknown {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class DELGOutput:
    """What one forward pass computed (None where not asked or not in the architecture).

    Attributes:
        block3: ``[B, C3, h, w]`` conv4 subsampled by 2 (stride 32), not detached.
        attention_logits: ``[B, 1, h, w]`` before softplus.
        attention: ``[B, 1, h, w]`` softplus scores, >= 0.
        local: ``[B, D, h, w]`` local descriptors before L2 (the autoencoder code, or ``block3`` for DELF).
        reconstruction: ``[B, C3, h, w]`` the autoencoder's output (DELG).
        global_prelogits: ``[B, G]`` the embedding (not normalised).
        global_descriptor: ``[B, G]`` L2-normalised embedding.
    """

    block3: torch.Tensor
    attention_logits: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    local: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    global_prelogits: torch.Tensor | None = None
    global_descriptor: torch.Tensor | None = None


class AttentionHead(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv to one channel; ``forward`` returns the logits."""

    def __init__(self, in_channels: int, hidden: int, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden, eps=bn_eps)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] -> [B, 1, h, w]`` attention logits."""
        return self.conv2(F.relu(self.bn(self.conv1(x))))


class Autoencoder(nn.Module):
    """DELG's descriptor reduction: 1x1 conv C -> D (linear code), 1x1 conv D -> C + ReLU."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, dim, 1)
        self.conv2 = nn.Conv2d(dim, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, h, w]`` -> (code ``[B, D, h, w]``, reconstruction ``[B, C, h, w]``)."""
        code = self.conv1(x)
        return code, F.relu(self.conv2(code))


def attention_pool(block3: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """DELF's attention-weighted feature: ``mean_{h,w}(l2n_C(block3) * attention)`` -> ``[B, C3]``.

    A mean over positions, not normalised by the sum of the scores (as TF's ``AttentionModel``).
    """
    return (F.normalize(block3, dim=1) * attention).mean(dim=(-2, -1))


class DELG(nn.Module):
    """DELF / DELG network (module docstring); ``forward`` returns a ``DELGOutput``.

    Args:
        conf: the architecture.
    """

    def __init__(self, conf: DELGConf | None = None) -> None:
        super().__init__()
        self.conf = conf = conf or DELGConf()
        self.backbone = ResNetBackbone(conf.depth, conf.layout)
        self.block3_channels, self.block4_channels = self.backbone.channels[2], self.backbone.channels[3]
        bn_eps = TF_BN_EPS if conf.layout == "tf" else 1e-5
        self.attention = AttentionHead(self.block3_channels, conf.attention_dim, bn_eps)
        self.autoencoder = Autoencoder(self.block3_channels, conf.local_dim) if conf.local_dim else None
        self.gem = GeM(conf.gem_p, learnable=False)
        self.embedding = nn.Linear(self.block4_channels, conf.global_dim) if conf.global_dim else None

    @property
    def local_dim(self) -> int:
        """``D`` of the local descriptors (``block3``'s channels for DELF)."""
        return self.conf.local_dim or self.block3_channels

    @property
    def global_dim(self) -> int:
        """``G`` of the global descriptor (0 without a global head)."""
        return self.conf.global_dim

    def receptive_field(self, side: int | None = None) -> ReceptiveField:
        """Receptive field of the local features along an input axis of length ``side`` (``resnet_delg``)."""
        return receptive_field(self.conf.depth, self.conf.layout, side)

    def forward(self, image: torch.Tensor, local: bool = True, global_: bool = True) -> DELGOutput:
        """Run the backbone and the heads asked for.

        Args:
            image: ``[B, 3, H, W]`` normalised RGB (module docstring).
            local: compute the attention scores and local descriptors.
            global_: compute the global descriptor (runs conv5; ignored without a global head).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected [B, 3, H, W] normalised RGB, got {tuple(image.shape)}")
        conv4 = self.backbone.conv4(image)
        out = DELGOutput(block3=conv4[:, :, ::2, ::2])
        if local:
            self._local(out)
        if global_ and self.embedding is not None:
            # conv5's first block has stride 2 on its 1x1 conv (tf) or its 3x3 (torchvision): running it on the
            # full conv4 equals TF's stride-1 block on the subsampled one for the tf layout, and keeps the
            # torchvision layout torchvision's network
            prelogits = self.embedding(self.gem(self.backbone.layer4(conv4)))
            out.global_prelogits = prelogits
            out.global_descriptor = F.normalize(prelogits, dim=-1)
        return out

    def _local(self, out: DELGOutput) -> None:
        features = out.block3.detach()
        if self.autoencoder is not None:
            code, reconstruction = self.autoencoder(features)
            out.local, out.reconstruction = code, reconstruction
            attention_input = reconstruction
        else:
            out.local, attention_input = out.block3, features
        logits = self.attention(attention_input)
        out.attention_logits, out.attention = logits, F.softplus(logits)


def output_stride(conf: DELGConf) -> int:
    """Input pixels per local-feature cell (32 for every depth and layout)."""
    return receptive_field(conf.depth, conf.layout).stride


def num_parameters(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def arcface_scale(dim: int) -> float:
    """``sqrt(dim)``: DELG's fixed ArcFace scale (``scale_factor_init = 45.25`` for 2048)."""
    return math.sqrt(dim)


__all__ = ["DELG", "DEPTHS", "PRESETS", "AttentionHead", "Autoencoder", "DELGConf", "DELGOutput", "arcface_scale",
           "attention_pool", "num_parameters", "output_stride", "resolve_preset"]
