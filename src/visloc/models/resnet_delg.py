"""ResNet backbones of DELF / DELG in two layouts, with the receptive field of their local features.

``layout="torchvision"`` is torchvision's ResNet exactly (v1.5: stride on the 3x3 conv of a stage's first
bottleneck, no conv bias, BatchNorm eps 1e-5, conv1 padded by 3, max-pool padded by 1). ``layout="tf"`` is
the Keras ResNet-50 / 101 that DELF and DELG train (tensorflow/models ``delf/python/training/model/
resnet50.py``): the stride of a stage's first bottleneck sits on its 1x1 ``conv1`` (and the shortcut), every
convolution has a bias, BatchNorm eps is 1e-3, conv1 uses TF "same" padding (for an even side: 2 before,
3 after) and the 3x3/2 max-pool has no padding. Module names are torchvision's in both layouts
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so a torchvision ImageNet state dict loads into the
torchvision layout after dropping ``fc.*``; ``weights.converters`` map the Keras names.

Both layouts are built from torchvision's modules (``weights=None``: no file, no download) and changed in
place for the tf layout, since only strides, biases, epsilons and the stem's padding differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from visloc.conf import ConfError

Layout = Literal["tf", "torchvision"]
#: blocks per stage of each depth, and whether the blocks are bottlenecks
DEPTHS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
}
TF_BN_EPS = 1e-3


def check_backbone(depth: int, layout: str) -> None:
    """``ConfError`` for a depth or layout no backbone has (the tf layout exists for bottleneck depths only)."""
    if depth not in DEPTHS:
        raise ConfError(f"depth: expected one of {sorted(DEPTHS)}, got {depth!r}")
    if layout not in ("tf", "torchvision"):
        raise ConfError(f"layout: expected tf or torchvision, got {layout!r}")
    if layout == "tf" and not DEPTHS[depth][1]:
        raise ConfError(f"layout tf: DELF/DELG's Keras ResNet exists for depth 50 or 101, got {depth}")


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution with a bias (zero-initialised), strides and padding unchanged."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, cast("tuple[int, int]", conv.kernel_size),
                     stride=cast("tuple[int, int]", conv.stride), padding=cast("tuple[int, int] | str", conv.padding),
                     bias=True)


def _to_tf_layout(net: torchvision.models.ResNet) -> None:
    """Change torchvision's ResNet in place into DELF's Keras layout (module docstring)."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                new = _with_bias(child)
                nn.init.zeros_(cast(torch.Tensor, new.bias))
                new.weight.data.copy_(child.weight.data)
                setattr(parent, name, new)
            elif isinstance(child, nn.BatchNorm2d):
                child.eps = TF_BN_EPS
    net.conv1.padding = (0, 0)  # TF "same" padding is applied in forward (it is asymmetric)
    net.maxpool.padding = 0
    for layer in (net.layer2, net.layer3, net.layer4):
        first = cast(Bottleneck, layer[0])
        first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's "same" padding ``(before, after)`` of one axis: total ``max((ceil(n/s) - 1) s + k - n, 0)``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ResNetBackbone(nn.Module):
    """ResNet stem and stages 1-4 (no pooling, no classifier) in the chosen layout.

    Args:
        depth: 18, 34, 50 or 101.
        layout: ``tf`` (50 / 101 only) or ``torchvision``.
    """

    def __init__(self, depth: int = 50, layout: Layout = "tf") -> None:
        super().__init__()
        check_backbone(depth, layout)
        self.depth, self.layout = depth, layout
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if layout == "tf":
            _to_tf_layout(net)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if DEPTHS[depth][1] else 1
        self.channels = (64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, BN, ReLU, max-pool: ``[B, 3, H, W] -> [B, 64, ~H/4, ~W/4]``."""
        if self.layout == "tf":
            top, bottom = tf_same_pad(int(x.shape[-2]), 7, 2)
            left, right = tf_same_pad(int(x.shape[-1]), 7, 2)
            x = F.pad(x, (left, right, top, bottom))
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def conv4(self, x: torch.Tensor) -> torch.Tensor:
        """Stages 1-3: ``[B, 3, H, W] -> [B, C3, ~H/16, ~W/16]`` (``C3`` = ``channels[2]``)."""
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All stages: ``[B, 3, H, W] -> [B, C4, ~H/32, ~W/32]``."""
        return self.layer4(self.conv4(x))


@dataclass(frozen=True)
class ReceptiveField:
    """Where a feature cell looks in the input image, along one axis.

    Attributes:
        size: receptive field in input pixels.
        stride: input pixels between neighbouring cells.
        offset: input pixel (pixel-centre-at-0) at the centre of cell 0's receptive field; cell ``i`` is
            centred at ``offset + stride * i``.
    """

    size: int
    stride: int
    offset: float

    def centre(self, index: torch.Tensor) -> torch.Tensor:
        """Input pixel coordinate of the centres of cells ``index``."""
        return self.offset + self.stride * index.to(torch.float32)


def _stage_layers(depth: int, layout: Layout, stages: int) -> list[tuple[int, int, int]]:
    """``(kernel, stride, pad_before)`` along the deepest path of the first ``stages`` stages."""
    blocks, bottleneck = DEPTHS[depth]
    layers: list[tuple[int, int, int]] = []
    for stage in range(stages):
        for b in range(blocks[stage]):
            s = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                first, mid = (s, 1) if layout == "tf" else (1, s)
                layers += [(1, first, 0), (3, mid, 1), (1, 1, 0)]
            else:
                layers += [(3, s, 1), (3, 1, 1)]
    return layers


def receptive_field(depth: int, layout: Layout, side: int | None = None, block3_strides: bool = True
                    ) -> ReceptiveField:
    """Receptive field of DELF / DELG's local features (conv4, subsampled by 2 when ``block3_strides``).

    Walks the layers (``r += (k - 1) j``, ``offset += ((k - 1) / 2 - pad_before) j``, ``j *= s``) instead of
    hard-coding DELF's constants: the tf layout gives size 291 and stride 32 (DELF's ``rf, stride = 291, 32``),
    torchvision's 267 and 32. The tf stem's "same" padding depends on the input side's parity: ``side`` even
    (or None) puts 2 pixels before, odd 3; DELF's exporter ignores this and assumes offset 0 (its padding
    constant 145 = (291 - 1) / 2), about 3 pixels off for even sides.

    Args:
        depth: backbone depth.
        layout: ``tf`` or ``torchvision``.
        side: the input's length along this axis (for the tf stem's padding); None: even.
        block3_strides: conv4 subsampled by 2 (DELF / DELG's default), as ``DELG`` always does.
    """
    check_backbone(depth, layout)
    if layout == "tf":
        stem_pad = 2 if side is None or side % 2 == 0 else 3
        layers = [(7, 2, stem_pad), (3, 2, 0)]
    else:
        layers = [(7, 2, 3), (3, 2, 1)]
    layers += _stage_layers(depth, layout, 3)
    if block3_strides:
        layers.append((1, 2, 0))
    size, jump, offset = 1, 1, 0.0
    for k, s, pad in layers:
        offset += ((k - 1) / 2 - pad) * jump
        size += (k - 1) * jump
        jump *= s
    return ReceptiveField(size, jump, offset)


__all__ = ["DEPTHS", "BasicBlock", "Bottleneck", "Layout", "ReceptiveField", "ResNetBackbone", "check_backbone",
           "receptive_field", "tf_same_pad"]
