"""Exact values of the Coarse LoFTR losses and of the distillation pieces on tiny constructed matrices."""

from __future__ import annotations

import math

import pytest
import torch

from visloc.train.loftr.distill import (
    distill_kl,
    merge_positives,
    subsample_sim,
    teacher_positives,
)
from visloc.train.loftr.losses import EPS, LossConf, coarse_loss, gt_mask

# one pair, L = 2 cells of image 0, S = 3 cells of image 1; cell 0 matches cell 1, cell 1 has no match
CONF = torch.tensor([[[0.1, 0.8, 0.05], [0.3, 0.2, 0.6]]])
MATCHES0 = torch.tensor([[1, -1]])
NEGATIVES = [0.1, 0.05, 0.3, 0.2, 0.6]


def test_gt_mask_marks_one_entry_per_matched_row():
    mask = gt_mask(torch.tensor([[2, -1, 0]]), 3)
    assert mask.tolist() == [[[False, False, True], [False, False, False], [True, False, False]]]
    with pytest.raises(ValueError, match=r"values must be in \[-1, 3\)"):
        gt_mask(torch.tensor([[3]]), 3)


def test_focal_loss_exact_value():
    a, g = 0.25, 2.0
    pos = -a * (1 - 0.8) ** g * math.log(0.8)
    neg = sum(-a * p**g * math.log(1 - p) for p in NEGATIVES) / len(NEGATIVES)
    out = coarse_loss(CONF, MATCHES0, LossConf())
    assert out["pos"].item() == pytest.approx(pos, rel=1e-6)
    assert out["neg"].item() == pytest.approx(neg, rel=1e-6)
    assert out["total"].item() == pytest.approx(pos + neg, rel=1e-6)
    assert out["num_pos"].item() == 1
    weighted = coarse_loss(CONF, MATCHES0, LossConf(pos_weight=2.0, neg_weight=0.5))
    assert weighted["total"].item() == pytest.approx(2 * pos + 0.5 * neg, rel=1e-6)


def test_bce_loss_exact_value():
    pos = -math.log(0.8)
    neg = sum(-math.log(1 - p) for p in NEGATIVES) / len(NEGATIVES)
    out = coarse_loss(CONF, MATCHES0, LossConf(type="bce"))
    assert out["total"].item() == pytest.approx(pos + neg, rel=1e-6)


def test_means_pool_the_batch_and_clamp_as_loftr():
    # two pairs: the positive mean is over both positives, not a mean of per-pair means
    conf = torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]]])
    out = coarse_loss(conf, torch.tensor([[0], [1]]), LossConf(type="bce"))
    # pair 0: its positive is exactly 0 and its negative exactly 1: both clamped to 1e-6 / 1 - 1e-6
    lo, hi = torch.tensor(EPS).item(), torch.tensor(1 - EPS).item()  # float32 values of the clamp bounds
    assert out["pos"].item() == pytest.approx((-math.log(lo) + math.log(2)) / 2, rel=1e-5)
    assert out["neg"].item() == pytest.approx((-math.log(1 - hi) + math.log(2)) / 2, rel=1e-5)
    assert torch.isfinite(out["total"])


def test_no_positive_gives_the_negative_term_only():
    out = coarse_loss(CONF, torch.tensor([[-1, -1]]), LossConf())
    neg = sum(-0.25 * p**2 * math.log(1 - p) for p in [0.1, 0.8, 0.05, 0.3, 0.2, 0.6]) / 6
    assert out["pos"].item() == 0.0 and out["total"].item() == pytest.approx(neg, rel=1e-6)


def test_loss_gradient_raises_the_positive_and_lowers_the_negatives():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    conf = torch.softmax(logits, 1) * torch.softmax(logits, 2)
    coarse_loss(conf, MATCHES0, LossConf())["total"].backward()
    grad = logits.grad
    assert grad is not None
    assert grad[0, 0, 1] < 0  # gradient descent raises the positive's logit
    assert grad[0, 1].sum() > 0  # and lowers the unmatched row


def _sim_code(h0: int, w0: int, h1: int, w1: int) -> torch.Tensor:
    """``sim[i, j] = 1000 i + j`` on the flattened teacher cells."""
    i = torch.arange(h0 * w0, dtype=torch.float64)[:, None]
    j = torch.arange(h1 * w1, dtype=torch.float64)[None, :]
    return (1000 * i + j)[None]


def test_subsample_maps_cells_spatially_not_by_flattened_index():
    # teacher grids 4 x 6 (image 0) and 4 x 4 (image 1) -> student grids 2 x 3 and 2 x 2
    sim = _sim_code(4, 6, 4, 4)
    mean = subsample_sim(sim, (4, 6), (4, 4), "mean")
    pick = subsample_sim(sim, (4, 6), (4, 4), "pick")
    assert mean.shape == pick.shape == (1, 6, 4)
    # student cell 4 of image 0 = (row 1, col 1) covers teacher cells (2..3, 2..3) of the 4 x 6 grid:
    # indices 2*6+2=14, 15, 20, 21; student cell 2 of image 1 = (1, 0) covers (2..3, 0..1) of 4 x 4: 8, 9, 12, 13
    assert mean[0, 4, 2].item() == 1000 * (14 + 15 + 20 + 21) / 4 + (8 + 9 + 12 + 13) / 4
    assert pick[0, 4, 2].item() == 1000 * 14 + 8  # the block's top-left cell (2R, 2C)
    # Kolkir's index_select(arange(L16) * 2) reads flattened teacher row 2*4 = 8 = (row 1, col 2): wrong row
    kolkir = sim.index_select(1, torch.arange(6) * 2).index_select(2, torch.arange(4) * 2)
    assert kolkir[0, 4, 2].item() == 1000 * 8 + 4
    assert not torch.equal(kolkir, pick)
    # the first student row of cells coincides (rows 0 of both grids), so the bug hid in the top rows
    assert torch.equal(kolkir[0, :3, :2], pick[0, :3, :2])


def test_subsample_rejects_odd_or_mismatched_grids():
    with pytest.raises(ValueError, match="even sides"):
        subsample_sim(_sim_code(3, 4, 4, 4), (3, 4), (4, 4))
    with pytest.raises(ValueError, match=r"expected \[B, 16, 16\]"):
        subsample_sim(_sim_code(4, 4, 4, 2), (4, 4), (4, 4))


def test_distill_kl_is_row_wise_at_temperature_exact():
    t = 5.0
    student = torch.zeros(1, 1, 2)
    teacher = torch.tensor([[[t * math.log(3.0), 0.0]]])  # teacher row softmax (3/4, 1/4), student (1/2, 1/2)
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * t**2
    assert distill_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)
    # a constant added to a teacher row does not change its row distribution (a joint softmax would see it)
    s = torch.randn(2, 3, 4)
    shifted = s + torch.tensor([0.0, 7.0, -3.0])[None, :, None]
    assert distill_kl(s, shifted, t).item() == pytest.approx(0.0, abs=1e-5)
    # the mean is over rows: two identical rows give the one-row value
    two = distill_kl(student.expand(1, 2, 2), teacher.expand(1, 2, 2), t)
    assert two.item() == pytest.approx(expected, rel=1e-6)


def test_teacher_positives_one_to_one_best_score_first():
    r = 16
    kpts0 = torch.tensor([[5.0, 5.0], [10.0, 8.0], [20.0, 3.0], [100.0, 100.0]])  # cells 0, 0, 1, outside
    kpts1 = torch.tensor([[40.0, 20.0], [3.0, 3.0], [36.0, 24.0]])  # cells (1, 2) = 6, 0, 6 on a 2 x 4 grid
    matches = torch.tensor([[0, 1], [1, 0], [2, 2], [3, 1]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.99])
    out = teacher_positives(kpts0, kpts1, matches, (2, 4), (2, 4), r, scores)
    # (1, 0) scores 0.9: cell 0 -> cell 6 (kpts1[0]); (0, 1) would reuse cell 0 of image 0: dropped;
    # (2, 2) -> cell 1 -> cell 6 again: cell 6 taken, dropped; (3, 1) is outside image 0
    assert out.tolist() == [6, -1, -1, -1, -1, -1, -1, -1]
    no_scores = teacher_positives(kpts0, kpts1, matches, (2, 4), (2, 4), r)
    assert no_scores.tolist() == [0, 6, -1, -1, -1, -1, -1, -1]  # in the given order


def test_merge_keeps_ground_truth_and_fills_free_cells():
    gt = torch.tensor([2, -1, -1, 0])
    extra = torch.tensor([1, 3, 2, 1])  # row 0 and 3 have GT; row 2 -> cell 2 is GT's cell: not added
    assert merge_positives(gt, extra).tolist() == [2, 3, -1, 0]
