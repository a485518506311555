"""The matcher contract.

``matcher(feats0, feats1)`` takes two images' features (``keypoints [N, 2]``, ``descriptors
[N, D]``, optional ``scores [N]`` and ``image_size (W, H)``, as torch tensors) and returns
``matches0 [N0]`` int64 (index into image 1, or -1), ``matching_scores0 [N0]``, and the same as a
list: ``matches [M, 2]`` (index in image 0, index in image 1) with ``scores [M]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visloc.registry import MATCHERS


def check_features(feats: dict[str, torch.Tensor], which: str) -> None:
    """Raise ``ValueError`` naming ``which`` when shapes break the contract."""
    for key in ("keypoints", "descriptors"):
        if key not in feats:
            raise ValueError(f"{which}: missing {key!r}")
    kp, desc = feats["keypoints"], feats["descriptors"]
    if kp.ndim != 2 or kp.shape[1] != 2:
        raise ValueError(f"{which}.keypoints: expected [N, 2], got {tuple(kp.shape)}")
    if desc.ndim != 2 or desc.shape[0] != kp.shape[0]:
        raise ValueError(f"{which}.descriptors: expected [N={kp.shape[0]}, D], got {tuple(desc.shape)}")


def to_output(matches0: torch.Tensor, scores0: torch.Tensor) -> dict[str, torch.Tensor]:
    """Build the contract's dict from ``matches0 [N0]`` and ``scores0 [N0]``."""
    matches0 = matches0.long()
    valid = matches0 >= 0
    idx0 = torch.nonzero(valid, as_tuple=False)[:, 0]
    return {"matches0": matches0, "matching_scores0": torch.where(valid, scores0, torch.zeros_like(scores0)),
            "matches": torch.stack([idx0, matches0[idx0]], -1), "scores": scores0[idx0]}


class Matcher(nn.Module):
    """Base class of sparse matchers."""

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf


__all__ = ["MATCHERS", "Matcher", "check_features", "to_output"]

