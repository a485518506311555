"""Cosine classifier with an additive angular margin (ArcFace, Deng et al. CVPR 2019), as DELG trains it.

``logits = s * cos(theta_k)`` with ``cos(theta_k) = <l2n(x), l2n(w_k)>``; for the label's column, when
labels are given (training), ``theta + m`` replaces ``theta`` only while ``theta <= pi - m`` (DELG's rule in
tensorflow/models ``delg_model.py``: past it the margin is dropped; pytorch-metric-learning instead
subtracts ``m sin m``). The scale is fixed by default (DELG: ``sqrt(2048) = 45.25``, not trainable).
Sub-center ArcFace (Deng et al. ECCV 2020) keeps ``sub_centers`` weight vectors per class and takes the
closest. Written here because torchvision and kornia have no ArcFace and pytorch-metric-learning's takes its
margin in degrees and clamps differently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: cosines are clamped this far inside [-1, 1] so that sin(theta) keeps a finite gradient
_COS_EPS = 1e-7


class ArcFaceHead(nn.Module):
    """ArcFace logits of embeddings ``[B, D]`` over ``num_classes`` classes.

    Args:
        dim: embedding size ``D``.
        num_classes: ``K``.
        margin: additive angular margin ``m`` in radians (DELG: 0.1).
        scale: logit scale ``s``; None: ``sqrt(dim)`` (DELG).
        learn_scale: train ``s`` (DELG keeps it fixed).
        sub_centers: weight vectors per class (1: plain ArcFace).
    """

    def __init__(self, dim: int, num_classes: int, margin: float = 0.1, scale: float | None = None,
                 learn_scale: bool = False, sub_centers: int = 1) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1 or sub_centers < 1:
            raise ValueError(f"ArcFaceHead: dim, num_classes and sub_centers must be >= 1, got {dim}, "
                             f"{num_classes}, {sub_centers}")
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFaceHead: margin must be in [0, pi/2) radians, got {margin}")
        s = math.sqrt(dim) if scale is None else float(scale)
        if not s > 0:
            raise ValueError(f"ArcFaceHead: scale must be > 0, got {s}")
        self.num_classes, self.sub_centers, self.margin = num_classes, sub_centers, float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, dim))
        nn.init.xavier_uniform_(self.weight)  # TF's GlorotUniform
        scale_tensor = torch.tensor(s)
        if learn_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> [B, K]`` cosine to each class (the closest of its sub-centres)."""
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"embedding: expected [B, {self.weight.shape[1]}], got {tuple(x.shape)}")
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        if self.sub_centers > 1:
            cos = cos.view(-1, self.num_classes, self.sub_centers).amax(dim=-1)
        return cos

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K]``; with ``labels [B]`` (int64 in ``[0, K)``) the margin is applied to their columns."""
        cos = self.cosine(x).clamp(-1 + _COS_EPS, 1 - _COS_EPS)
        if labels is not None and self.margin > 0:
            if labels.shape != (x.shape[0],) or labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"labels: expected [B={x.shape[0]}] in [0, {self.num_classes}), got "
                                 f"{tuple(labels.shape)} in [{int(labels.min())}, {int(labels.max())}]")
            target = cos.gather(1, labels[:, None])
            m = self.margin
            sin = (1 - target.square()).clamp_min(0).sqrt()
            with_margin = target * math.cos(m) - sin * math.sin(m)
            # theta <= pi - m  <=>  cos(theta) >= -cos(m): past it, keep cos(theta) (DELG)
            target = torch.where(target >= -math.cos(m), with_margin, target)
            cos = cos.scatter(1, labels[:, None], target)
        return self.scale * cos
