"""HF-Net's distillation losses and the learned multi-task uncertainty weighting.

Three terms (Sarlin et al. 2019, eq. 1), each averaged over the batch:

- ``global``: ``||g_s - g_t||^2`` between the global descriptors ``[B, G]``;
- ``descriptor``: ``||d_s - d_t||^2`` between dense descriptors ``[B, D, h, w]``, averaged over cells;
- ``detector``: cross-entropy ``-sum_c p_t(c) log softmax(logits)(c)`` of the student's 65-way cell
  logits against the teacher's soft cell distribution, averaged over cells.

Total (Kendall et al. 2018, as HF-Net): ``sum_i exp(-s_i) L_i + s_i`` with one learned ``s_i`` per
term; with fixed weights ``sum_i w_i L_i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TERMS = ("global", "descriptor", "detector")


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ")


def global_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared L2 distance of ``[B, G]`` descriptors."""
    _same_shape(student, teacher, "global descriptors")
    return (student.float() - teacher.float()).pow(2).sum(-1).mean()


def descriptor_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over batch and cells of the squared L2 distance of dense descriptors ``[B, D, h, w]``."""
    _same_shape(student, teacher, "dense descriptors")
    return (student.float() - teacher.float()).pow(2).sum(1).mean()


def detector_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and cells of the cross-entropy of ``logits [B, 65, h, w]`` vs ``target`` probabilities."""
    _same_shape(logits, target, "detector logits")
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


class DistillationLoss(nn.Module):
    """The three HF-Net terms and their weighting.

    Args:
        learned_weights: learn ``s_i`` (total ``sum exp(-s_i) L_i + s_i``); else ``sum w_i L_i``.
        init_log_vars: initial ``s`` for (global, descriptor, detector).
        weights: fixed ``w`` for the same terms.
    """

    weights: torch.Tensor  # buffer [3]: fixed weights of the terms

    def __init__(
        self,
        learned_weights: bool = True,
        init_log_vars: tuple[float, ...] = (0.0, 0.0, 0.0),
        weights: tuple[float, ...] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        if len(init_log_vars) != len(TERMS) or len(weights) != len(TERMS):
            raise ValueError(f"init_log_vars and weights: expected {len(TERMS)} values each")
        self.learned_weights = learned_weights
        self.log_vars = nn.Parameter(torch.tensor(init_log_vars, dtype=torch.float32), requires_grad=learned_weights)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(
        self, pred: dict[str, torch.Tensor], dense: torch.Tensor, cells: torch.Tensor, global_: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        Args:
            pred: student outputs ``logits [B, 65, h, w]``, ``dense_descriptors [B, D, h, w]``,
                ``global_descriptor [B, G]``.
            dense: teacher dense descriptors ``[B, D, h, w]``.
            cells: teacher cell distribution ``[B, 65, h, w]``.
            global_: teacher global descriptors ``[B, G]``.

        Returns:
            ``total``, each term by name, and ``s_<term>`` (the learned log-variances) or ``w_<term>``.
        """
        terms = torch.stack(
            [
                global_l2(pred["global_descriptor"], global_),
                descriptor_l2(pred["dense_descriptors"], dense),
                detector_cross_entropy(pred["logits"], cells),
            ]
        )
        if self.learned_weights:
            total = (torch.exp(-self.log_vars) * terms + self.log_vars).sum()
            extra = {f"s_{n}": self.log_vars[i].detach() for i, n in enumerate(TERMS)}
        else:
            total = (self.weights * terms).sum()
            extra = {f"w_{n}": self.weights[i] for i, n in enumerate(TERMS)}
        return {"total": total, **{n: terms[i] for i, n in enumerate(TERMS)}, **extra}
