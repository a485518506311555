"""Backbones built from torchvision without weights (``weights=None``: no download, no file access).

``mobilenet_v2_features`` returns torchvision's MobileNetV2 ``features`` up to and including the last
inverted residual block (index 17), with a first convolution that takes ``in_channels`` inputs.
Indices are torchvision's: ``features[0]`` is the stride-2 stem, ``features[1..17]`` the inverted
residual blocks, ``features[18]`` the final 1x1 conv to 1280 channels (left out). At width 0.75 the
outputs of ``features[:k]`` are:

====  ======  ========  ================================================
 k    stride  channels  note
====  ======  ========  ================================================
 7      8        24     TF-slim ``layer_7``: HF-Net's local features
 14    16        72
 18    32       240     last inverted residual: HF-Net's global features
====  ======  ========  ================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar, cast

import torch
import torchvision
from torch import nn

#: number of ``features`` modules kept (the final 1x1 conv to 1280 channels is dropped)
MOBILENET_V2_BLOCKS = 18


def mobilenet_v2_features(width_mult: float = 0.75, in_channels: int = 1) -> nn.Sequential:
    """MobileNetV2 ``features[:18]`` of torchvision, randomly initialised, taking ``in_channels``.

    Args:
        width_mult: channel multiplier (0.75 gives 24 channels at stride 8, 240 at stride 32).
        in_channels: 1 (gray) or 3 (RGB) input channels of the stem convolution.

    Returns:
        ``nn.Sequential`` mapping ``[B, in_channels, H, W]`` -> ``[B, C, H/32, W/32]``; its
        state-dict keys are torchvision's ``features.*`` keys without the ``features.`` prefix.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    net = torchvision.models.mobilenet_v2(width_mult=width_mult, weights=None)
    features = net.features[:MOBILENET_V2_BLOCKS]
    block0 = features[0]
    stem = block0[0] if isinstance(block0, nn.Sequential) else None
    if not isinstance(block0, nn.Sequential) or not isinstance(stem, nn.Conv2d):
        raise TypeError("torchvision mobilenet_v2: expected features[0][0] to be a Conv2d")
    if in_channels != stem.in_channels:
        # torch's stubs type Conv2d's stored sizes tuple[int, ...]; they are the 2-tuples it was built with
        block0[0] = nn.Conv2d(in_channels, stem.out_channels, kernel_size=cast("tuple[int, int]", stem.kernel_size),
                              stride=cast("tuple[int, int]", stem.stride),
                              padding=cast("tuple[int, int] | str", stem.padding), bias=False)
    return features


def mobilenet_v2_channels(features: nn.Sequential, num_blocks: int) -> int:
    """Output channels of ``features[:num_blocks]``."""
    block = features[num_blocks - 1]
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def imagenet_to_features_state_dict(state_dict: Mapping[str, torch.Tensor], in_channels: int = 1
                                    ) -> dict[str, torch.Tensor]:
    """Convert a torchvision MobileNetV2 ImageNet state dict to the keys of ``mobilenet_v2_features``.

    Keeps ``features.0`` .. ``features.17`` (prefix removed), drops the 1280-channel conv and the
    classifier. For gray input the stem's RGB filters ``[C, 3, 3, 3]`` are summed over the colour
    axis, so that the network sees gray normalised by ``visloc.weights.records.IMAGENET_GRAY`` (the
    ImageNet mean and std averaged over RGB) roughly as it saw ImageNet.

    Args:
        state_dict: ``torchvision.models.mobilenet_v2(...).state_dict()`` of the same width.
        in_channels: 1 or 3, as given to ``mobilenet_v2_features``.

    Returns:
        a state dict for ``mobilenet_v2_features(width, in_channels)``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        if index >= MOBILENET_V2_BLOCKS:
            continue
        name = key[len("features."):]
        if name == "0.0.weight" and in_channels == 1 and value.ndim == 4 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)
        out[name] = value
    if not out:
        raise ValueError("state_dict: no 'features.*' keys, not a torchvision MobileNetV2 state dict")
    return out


def adapt_rgb_filters(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv filters ``[O, 3, k, k]`` learned on RGB -> ``[O, C, k, k]`` for ``C`` non-colour channels.

    Each output filter is the mean of its R, G and B filters, repeated over the ``C`` channels and
    scaled by ``3 / C``: every channel gets ``(R + G + B) / C``, so a constant input of one value on
    all ``C`` channels gives the response the RGB filter gave a gray image of that value, and the
    activations after the first conv keep ImageNet's scale whatever ``C`` is. ``C = 1`` gives the sum of the RGB
    filters, as ``imagenet_to_features_state_dict`` does for gray input.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"weight: expected RGB filters [O, 3, k, k], got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels: must be >= 1, got {in_channels}")
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


@torch.no_grad()
def fuse_batchnorm(module: _ModuleT) -> _ModuleT:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into it.

    In place; returns ``module``. The outputs are unchanged up to float rounding, and torch eager
    skips one full pass over each feature map (onnxruntime fuses them itself). For inference only:
    the folded network no longer trains as before.
    """
    if module.training:
        raise ValueError("fuse_batchnorm: the module must be in eval mode")
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return module
