"""Ground-truth losses of the coarse matcher on its dual-softmax confidence matrix.

The targets are LoFTR's dense coarse supervision: the ground truth ``matches0 [B, L]`` (cell ``j`` of
image 1 for cell ``i`` of image 0, -1 none; ``train.loftr.supervision``) marks the positive entries
``(b, i, matches0[b, i])`` of the ``[B, L, S]`` confidence matrix; every other entry is a negative.
Both terms are means over the whole batch (LoFTR's ``compute_coarse_loss`` with ``SPARSE_SPVS=False``)::

    focal:  pos = -alpha (1 - p)^gamma log p        neg = -alpha p^gamma log(1 - p)
    bce:    pos = -log p                             neg = -log(1 - p)
    loss  = pos_weight * mean(pos) + neg_weight * mean(neg)

with ``p`` clamped to ``[1e-6, 1 - 1e-6]`` (LoFTR's clamp). A batch without any positive gives the
negative term only (LoFTR marks one dummy positive with weight 0; the result is the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

#: LoFTR's clamp of the confidences before the logarithms
EPS = 1e-6


@dataclass(frozen=True)
class LossConf:
    """The ground-truth term: LoFTR's focal loss (alpha 0.25, gamma 2) or plain BCE (Kolkir's)."""

    type: Literal["focal", "bce"] = "focal"
    alpha: float = 0.25
    gamma: float = 2.0
    pos_weight: float = 1.0
    neg_weight: float = 1.0


def gt_mask(matches0: torch.Tensor, num1: int) -> torch.Tensor:
    """Dense positives ``[B, L, S]`` bool from ``matches0 [B, L]`` int64 (-1: no match); ``S = num1``."""
    if matches0.ndim != 2:
        raise ValueError(f"matches0: expected [B, L], got {tuple(matches0.shape)}")
    if bool((matches0 >= num1).any()) or bool((matches0 < -1).any()):
        raise ValueError(f"matches0: values must be in [-1, {num1}), got [{int(matches0.min())}, "
                         f"{int(matches0.max())}]")
    mask = torch.zeros(*matches0.shape, num1 + 1, dtype=torch.bool, device=matches0.device)
    mask.scatter_(2, torch.where(matches0 < 0, num1, matches0).unsqueeze(-1), True)
    return mask[..., :num1]


def coarse_loss(conf: torch.Tensor, matches0: torch.Tensor, lc: LossConf) -> dict[str, torch.Tensor]:
    """Focal or BCE loss of the confidence matrix against the ground-truth matches.

    Args:
        conf: ``[B, L, S]`` dual-softmax confidences in ``[0, 1]`` (any float dtype; computed in float32).
        matches0: ``[B, L]`` int64 ground-truth cell of image 1 for each cell of image 0, -1 none.
        lc: loss type and weights.

    Returns:
        ``total`` (weighted sum), ``pos`` and ``neg`` (the two unweighted means; ``pos`` is 0 without
        positives) and ``num_pos`` (float count of positives in the batch).
    """
    if conf.ndim != 3 or conf.shape[:2] != matches0.shape:
        raise ValueError(f"conf {tuple(conf.shape)} and matches0 {tuple(matches0.shape)}: expected [B, L, S] "
                         "and [B, L]")
    pos_mask = gt_mask(matches0, conf.shape[2])
    p = conf.float().clamp(EPS, 1.0 - EPS)
    p_pos, p_neg = p[pos_mask], p[~pos_mask]
    if lc.type == "focal":
        loss_pos = -lc.alpha * (1.0 - p_pos).pow(lc.gamma) * p_pos.log()
        loss_neg = -lc.alpha * p_neg.pow(lc.gamma) * (1.0 - p_neg).log()
    elif lc.type == "bce":
        loss_pos, loss_neg = -p_pos.log(), -(1.0 - p_neg).log()
    else:
        raise ValueError(f"loss.type: expected focal or bce, got {lc.type!r}")
    pos = loss_pos.mean() if loss_pos.numel() else p.new_zeros(())
    neg = loss_neg.mean() if loss_neg.numel() else p.new_zeros(())
    total = lc.pos_weight * pos + lc.neg_weight * neg
    return {"total": total, "pos": pos, "neg": neg, "num_pos": pos_mask.sum().to(p.dtype)}
