"""The triplet margin loss of Event-VPR training, on the descriptors of one forward pass.

The batch's descriptors are encoded together, with gradients, in the order ``[q_1..q_B, p_1..p_B,
n_11..n_1K, ..., n_B1..n_BK]`` (NetVLAD's and the VG benchmark's ``cat([q, p, negs])``: one pass, so the
positive is trained like the others and BatchNorm sees one batch). With ``d`` the L2 distance of
L2-normalised descriptors (in ``[0, 2]``)::

    triplet = mean_{b, k} relu(d(q_b, p_b) - d(q_b, n_bk) + margin)

averaged rather than summed (the VG benchmark sums), so that the learning rate does not depend on ``B`` and
``K``. ``margin`` is in those distance units (0.1 as the VG benchmark; NetVLAD's sqrt(0.1) on the same
distance). Monitored too: ``active`` (fraction of triplets with a positive loss), ``d_pos`` and ``d_neg``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_triplets(desc: torch.Tensor, num_queries: int, num_negatives: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B (2 + K), D]`` -> queries ``[B, D]``, positives ``[B, D]``, negatives ``[B, K, D]``."""
    b, k = num_queries, num_negatives
    if desc.dim() != 2 or desc.shape[0] != b * (2 + k):
        raise ValueError(f"desc: expected [{b} * (2 + {k}), D] (queries, positives, negatives), got "
                         f"{tuple(desc.shape)}")
    return desc[:b], desc[b:2 * b], desc[2 * b:].reshape(b, k, -1)


def triplet_losses(desc: torch.Tensor, num_queries: int, num_negatives: int, margin: float = 0.1
                   ) -> dict[str, torch.Tensor]:
    """``total`` (= ``triplet``), ``active``, ``d_pos``, ``d_neg`` of one batch (module docstring).

    Args:
        desc: ``[B (2 + K), D]`` L2-normalised descriptors in the module docstring's order.
        num_queries: ``B``.
        num_negatives: ``K``.
        margin: in L2 distance units.
    """
    q, p, n = split_triplets(desc.float(), num_queries, num_negatives)
    d_pos = (q - p).norm(dim=-1)  # [B]
    d_neg = (q[:, None] - n).norm(dim=-1)  # [B, K]
    hinge = F.relu(d_pos[:, None] - d_neg + margin)
    loss = hinge.mean()
    with torch.no_grad():
        active = (hinge > 0).float().mean()
    return {"total": loss, "triplet": loss, "active": active, "d_pos": d_pos.detach().mean(),
            "d_neg": d_neg.detach().mean()}


__all__ = ["split_triplets", "triplet_losses"]
