"""Mutual nearest-neighbour matching with ratio and distance tests, batched, on any device."""

from __future__ import annotations

from collections.abc import Sequence
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
                           distance_threshold: float | None = None, mutual: bool = True,
                           valid1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Match L2-normalised descriptors.

    Args:
        desc0: ``[B, N0, D]``.
        desc1: ``[B, N1, D]``.
        ratio_threshold: keep a match when ``d1 < ratio * d2`` (distances to the two nearest).
        distance_threshold: keep a match when its L2 distance is below this.
        mutual: keep only mutual nearest neighbours.
        valid1: ``[B, N1]`` bool, False at padding: pairs whose images have fewer keypoints than ``N1`` (each
            with at least one) run in one batch with the matches each gives alone.

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
    if valid1 is not None:  # a padded column is nobody's neighbour; a missing second one passes the ratio test
        if valid1.shape != (b, n1):
            raise ValueError(f"valid1: expected [B={b}, N1={n1}], got {tuple(valid1.shape)}")
        sim = sim.masked_fill(~valid1[:, None, :], -float("inf"))
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

    def match_many(self, feats0: Features, others: Sequence[Features]) -> list[Matches]:
        """``feats0`` against each of ``others``: one padded batch (``match_padded``) off the CPU, else pair by pair.

        On the CPU the pairs are faster one by one (``benchmarks/bench_match_many.py``: 35 against 57 ms for a
        query of 1024 HF-Net keypoints and 10 images, 32 against 169 ms for SIFT): the batch's similarity tensor
        leaves the cache. Both give the same matches.
        """
        if feats0.descriptors.device.type == "cpu":
            return super().match_many(feats0, others)
        return self.match_padded(feats0, others)

    def match_padded(self, feats0: Features, others: Sequence[Features]) -> list[Matches]:
        """``feats0`` against each of ``others`` in one padded batch; the matches of pair-by-pair ``forward``."""
        full = [i for i, f in enumerate(others) if f.num_keypoints]
        if feats0.num_keypoints == 0 or len(full) < 2:
            return super().match_many(feats0, others)
        check_features(feats0, "feats0")
        for i in full:
            check_features(others[i], f"others[{i}]")
            if others[i].descriptor_dim != feats0.descriptor_dim:
                raise InputError(f"feats0, others[{i}]: descriptors of {feats0.descriptor_dim} and "
                                 f"{others[i].descriptor_dim} dimensions cannot be matched")
        n1 = max(others[i].num_keypoints for i in full)
        dev = feats0.descriptors.device
        desc1 = torch.zeros(len(full), n1, feats0.descriptor_dim, device=dev)
        valid1 = torch.zeros(len(full), n1, dtype=torch.bool, device=dev)
        for row, i in enumerate(full):
            desc1[row, :others[i].num_keypoints] = others[i].descriptors.float()
            valid1[row, :others[i].num_keypoints] = True
        desc0 = feats0.descriptors.float()[None].expand(len(full), -1, -1)
        c = self.conf
        m0, s0 = nearest_neighbor_match(desc0, desc1, c.ratio_threshold, c.distance_threshold, c.mutual, valid1)
        out = {i: Matches.from_matches0(m0[row], s0[row], others[i].num_keypoints) for row, i in enumerate(full)}
        return [out[i] if i in out else self(feats0, f) for i, f in enumerate(others)]


def _capabilities(conf: NNConf) -> Capabilities:
    return Capabilities(frozenset({"matches"}))  # any descriptor family


MATCHERS.register("nn-mutual", NNConf(), NearestNeighbor, capabilities=_capabilities)
MATCHERS.register("nn-ratio", NNConf(ratio_threshold=0.8), NearestNeighbor, capabilities=_capabilities)
