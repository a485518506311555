"""Validation of the coarse matcher on held-out world pairs: match precision against depth GT, pose AUC.

Per pair, the predicted matches are the ``match_mask`` entries (threshold, border, mutual NN) read by
``extract_matches``; ``gt`` is the pair's ground truth ``matches0 [L]`` (``train.loftr.supervision``).

- ``precision``: the fraction of predicted matches ``(i, j)`` with ``gt[i] == j`` (the predicted cell is
  the ground-truth cell). ``precision@1``: the fraction with ``gt[i]`` defined and within one cell of
  ``j`` (Chebyshev distance <= 1 on the grid of image 1, the coarse level's quantisation). A match from a
  cell without ground truth (sky, occluded, outside image 1, or dropped by the loop-back check) counts
  as wrong in both, so the numbers are lower bounds. Pooled over the pairs (a pair with many matches
  weighs more); NaN when no pair has a match.
- ``recall``: the fraction of ground-truth matches off the border that are predicted exactly.
- ``auc@5/10/20``: pose AUC (``geometry.metrics.auc_table``) of ``max(rotation, translation)`` error of the
  relative pose from the essential matrix (``geometry.estimators``, USAC MAGSAC++, ``ransac_px``) on
  the matched cell centres with the pair's intrinsics; fewer than 8 matches count as a failure (inf).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from visloc.geometry.estimators import Estimator, EstimatorConf
from visloc.geometry.metrics import auc_table, pose_error_max, relative_pose_error
from visloc.models.coarse_loftr import CoarseLoFTR, CoarseMatchConf, cell_centers, extract_matches, match_mask

#: pose AUC thresholds in degrees
AUC_THRESHOLDS = (5, 10, 20)


def match_counts(idx0: torch.Tensor, idx1: torch.Tensor, gt: torch.Tensor, w1: int) -> tuple[int, int, int]:
    """``(predicted, exact, within one cell)`` for predicted cell pairs ``idx0, idx1 [M]`` and ``gt [L]``.

    Args:
        idx0: cells of image 0 (row-major).
        idx1: cells of image 1.
        gt: ground-truth cell of image 1 of each cell of image 0, -1 none.
        w1: width of the grid of image 1 (to read rows and columns from indices).
    """
    g = gt.to(idx0.device)[idx0]
    has = g >= 0
    exact = has & (g == idx1)
    dr = (torch.div(g, w1, rounding_mode="floor") - torch.div(idx1, w1, rounding_mode="floor")).abs()
    dc = (g % w1 - idx1 % w1).abs()
    near = has & (dr <= 1) & (dc <= 1)
    return len(idx0), int(exact.sum()), int(near.sum())


def inner_gt(gt: torch.Tensor, hw0: tuple[int, int], hw1: tuple[int, int], border: int) -> torch.Tensor:
    """``gt [L]`` with the matches that touch the border of either grid removed (what ``match_mask`` can find)."""
    if border <= 0:
        return gt

    def inner(idx: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        r, c = torch.div(idx, hw[1], rounding_mode="floor"), idx % hw[1]
        return (r >= border) & (r < hw[0] - border) & (c >= border) & (c < hw[1] - border)

    i = torch.arange(len(gt), device=gt.device)
    keep = (gt >= 0) & inner(i, hw0) & inner(gt.clamp(min=0), hw1)
    return torch.where(keep, gt, torch.full_like(gt, -1))


def pair_pose_error(idx0: torch.Tensor, idx1: torch.Tensor, hw0: tuple[int, int], hw1: tuple[int, int],
                    resolution: int, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray,
                    estimator: Estimator) -> float:
    """``max(rotation, translation)`` error in degrees of the pose from the matched cell centres (inf: failed)."""
    k0 = cell_centers(*hw0, resolution)[idx0.cpu()].double().numpy()
    k1 = cell_centers(*hw1, resolution)[idx1.cpu()].double().numpy()
    est = estimator(k0, k1, K0, K1)
    err_R, err_t = relative_pose_error(est.R, est.t, T_0to1[:3, :3], T_0to1[:3, 3])
    return pose_error_max(err_R, err_t)


@torch.no_grad()
def evaluate(model: CoarseLoFTR, batches: Iterable[Mapping[str, Any]], mconf: CoarseMatchConf,
             ransac_px: float, device: torch.device | str = "cpu") -> dict[str, float]:
    """Validation metrics (module docstring) of ``model`` over batches of ``WorldPairs`` items.

    The model runs in eval mode in float32 (autocast off) and is put back in its previous mode.
    Returns ``precision``, ``precision@1``, ``recall``, ``num_matches`` (mean per pair), ``auc@5/10/20``
    and ``num_pairs``.
    """
    was_training = model.training
    model.eval()
    estimator = Estimator(EstimatorConf(model="essential", threshold=ransac_px))
    r = model.conf.resolution
    pred = exact = near = gt_total = gt_found = pairs = 0
    errors: list[float] = []
    try:
        for batch in batches:
            im0, im1 = batch["image0"].to(device).float(), batch["image1"].to(device).float()
            with torch.autocast(device_type=torch.device(device).type, enabled=False):
                conf = model(im0, im1)["conf"]
            hw0, hw1 = model.grid(*im0.shape[-2:]), model.grid(*im1.shape[-2:])
            found = extract_matches(conf, match_mask(conf, hw0, hw1, mconf))
            for b, (idx0, idx1, _) in enumerate(found):
                gt = batch["matches0"][b].to(idx0.device)
                n, e, c = match_counts(idx0, idx1, gt, hw1[1])
                pred, exact, near, pairs = pred + n, exact + e, near + c, pairs + 1
                inner = inner_gt(gt, hw0, hw1, mconf.border)
                gt_total += int((inner >= 0).sum())
                gt_found += int((inner[idx0] == idx1).sum()) if n else 0
                K0, K1 = batch["K0"][b].double().numpy(), batch["K1"][b].double().numpy()
                errors.append(pair_pose_error(idx0, idx1, hw0, hw1, r, K0, K1, batch["T_0to1"][b].double().numpy(),
                                              estimator))
    finally:
        model.train(was_training)
    nan = float("nan")
    out = {"precision": exact / pred if pred else nan, "precision@1": near / pred if pred else nan,
           "recall": gt_found / gt_total if gt_total else nan, "num_matches": pred / pairs if pairs else nan,
           "num_pairs": float(pairs)}
    return out | (auc_table(errors, AUC_THRESHOLDS) if errors else {f"auc@{t}": nan for t in AUC_THRESHOLDS})
