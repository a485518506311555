"""Mutual nearest-neighbour matching with ratio and distance tests, batched, on any device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visloc import conf_ranges as ranges
from visloc.errors import InputError
from visloc.matching.base import MATCHERS, Matcher, check_features
from visloc.registry import Capabilities
from visloc.types import Features, Matches


@dataclass(frozen=True)
class NNConf:
    """``ratio_threshold``: Lowe's ratio on L2 distances; ``distance_threshold``: max L2 distance."""

    ratio_threshold: float | None = None
    distance_threshold: float | None = None
    mutual: bool = True

    def __post_init__(self) -> None:
        ranges.between(self, 0, 1, "ratio_threshold")
        ranges.between(self, 0, 2, "distance_threshold")  # L2 between unit vectors


def nearest_neighbor_match(desc0: torch.Tensor, desc1: torch.Tensor, ratio_threshold: float | None = None,
                           distance_threshold: float | None = None, mutual: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match L2-normalised descriptors.

    Args:
        desc0: ``[B, N0, D]``.
        desc1: ``[B, N1, D]``.
        ratio_threshold: keep a match when ``d1 < ratio * d2`` (distances to the two nearest).
        distance_threshold: keep a match when its L2 distance is below this.
        mutual: keep only mutual nearest neighbours.

    Returns:
        ``matches0 [B, N0]`` (int64, -1 when unmatched) and ``scores0 [B, N0]`` = ``(1 + cos) / 2``.
    """
    if desc0.ndim != 3 or desc1.ndim != 3 or desc0.shape[0] != desc1.shape[0] or desc0.shape[2] != desc1.shape[2]:
        raise ValueError(f"descriptors: expected [B, N0, D] and [B, N1, D], got {tuple(desc0.shape)} "
                         f"and {tuple(desc1.shape)}")
    b, n0, n1 = desc0.shape[0], desc0.shape[1], desc1.shape[1]
    if n0 == 0 or n1 == 0:
        return (torch.full((b, n0), -1, dtype=torch.long, device=desc0.device),
                torch.zeros((b, n0), dtype=desc0.dtype, device=desc0.device))
    sim = torch.einsum("bnd,bmd->bnm", desc0, desc1)
    k = 2 if (ratio_threshold is not None and n1 > 1) else 1
    top_sim, top_idx = sim.topk(k, dim=2)
    dist_sq = (2.0 - 2.0 * top_sim).clamp(min=0.0)
    matches0 = top_idx[..., 0]
    valid = torch.ones_like(matches0, dtype=torch.bool)
    if ratio_threshold is not None and k == 2:
        valid &= dist_sq[..., 0] < (ratio_threshold**2) * dist_sq[..., 1]
    if distance_threshold is not None:
        valid &= dist_sq[..., 0] < distance_threshold**2
    if mutual:
        matches1 = sim.argmax(dim=1)  # [B, N1]
        loop = torch.gather(matches1, 1, matches0)
        valid &= loop == torch.arange(n0, device=desc0.device)[None]
    scores0 = (1.0 + top_sim[..., 0]) / 2.0
    return torch.where(valid, matches0, torch.full_like(matches0, -1)), torch.where(valid, scores0, 0.0)


class NearestNeighbor(Matcher):
    """Mutual nearest neighbour with optional ratio and distance tests."""

    def forward(self, feats0: Features, feats1: Features) -> Matches:
        """Match two images' descriptors; see the contract in ``visloc.matching.base``."""
        check_features(feats0, "feats0")
        check_features(feats1, "feats1")
        if feats0.num_keypoints and feats1.num_keypoints and feats0.descriptor_dim != feats1.descriptor_dim:
            raise InputError(f"feats0, feats1: descriptors of {feats0.descriptor_dim} and {feats1.descriptor_dim} "
                             "dimensions cannot be matched")
        c = self.conf
        m0, s0 = nearest_neighbor_match(feats0.descriptors[None].float(), feats1.descriptors[None].float(),
                                        c.ratio_threshold, c.distance_threshold, c.mutual)
        return Matches.from_matches0(m0[0], s0[0], feats1.num_keypoints)


def _capabilities(conf: NNConf) -> Capabilities:
    return Capabilities(frozenset({"matches"}))  # any descriptor family


MATCHERS.register("nn-mutual", NNConf(), NearestNeighbor, capabilities=_capabilities)
MATCHERS.register("nn-ratio", NNConf(ratio_threshold=0.8), NearestNeighbor, capabilities=_capabilities)
