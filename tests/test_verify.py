"""DELG-rule geometric verification (``retrieval.verify``) on constructed cases with exact answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from visloc.conf import ConfError
from visloc.retrieval.verify import (
    VerifyConf,
    affine_inliers,
    putative_matches,
    rerank_verified,
    shortlist,
    verify_pair,
)
from visloc.types import Features

A = np.array([[0.9, -0.2, 30.0], [0.15, 1.1, -12.0]])  # db -> query


def _unit(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _feats(kpts: np.ndarray, desc: np.ndarray) -> Features:
    return Features(torch.from_numpy(kpts.astype(np.float32)), torch.from_numpy(desc.astype(np.float32)),
                    torch.ones(len(kpts)), (640, 480))


def _db_image(rng, q_kpts, q_desc, n_in, n_out, n_unmatched=20, noise=0.0):
    """A db image whose first ``n_in`` matches follow ``A`` exactly (or with noise), ``n_out`` lie >= 100 px off."""
    inv = cv2.invertAffineTransform(A)
    idx = rng.permutation(len(q_kpts))[:n_in + n_out]
    target = q_kpts[idx].copy()  # where each match lands in the query
    angle = rng.uniform(0, 2 * np.pi, n_out)
    target[n_in:] += np.stack([np.cos(angle), np.sin(angle)], 1) * rng.uniform(100, 200, (n_out, 1))
    target[:n_in] += rng.normal(scale=noise, size=(n_in, 2)) if noise else 0.0
    kpts = target @ inv[:, :2].T + inv[:, 2]
    extra = rng.uniform(0, 480, (n_unmatched, 2))
    return _feats(np.r_[kpts, extra], np.r_[q_desc[idx], _unit(rng, n_unmatched)])


@pytest.fixture(scope="module")
def query():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 480, (80, 2)), _unit(rng, 80)


def test_conf_defaults_and_errors():
    c = VerifyConf()
    assert (c.top, c.rule, c.distance, c.residual, c.iterations, c.ratio) == (100, "delg", 1.0, 20.0, 1000, None)
    for kw, field in (({"rule": "best"}, "rule"), ({"top": -1}, "top"), ({"distance": 0}, "distance"),
                      ({"ratio": 1.5}, "ratio"), ({"residual": 0}, "residual"), ({"min_inliers": -1}, "min_inliers")):
        with pytest.raises(ConfError, match=rf"VerifyConf.{field}"):
            VerifyConf(**kw)


def test_putative_matches_equal_ckdtree_and_ratio():
    rng = np.random.default_rng(3)
    q = _unit(rng, 300, 16)
    d = np.r_[_unit(rng, 200, 16), q[:50] + rng.normal(scale=0.1, size=(50, 16))]
    m = putative_matches(q, d, 0.9)
    dist, idx = cKDTree(d).query(q, distance_upper_bound=0.9, workers=1)
    found = np.flatnonzero(idx < len(d))
    assert len(found) > 50  # real random neighbours under 0.9 too, not only the planted ones
    np.testing.assert_array_equal(m, np.stack([found, idx[found]], 1))
    (d2, i2) = cKDTree(d).query(q, k=2, workers=1)
    ratio = putative_matches(q, d, 0.9, ratio=0.8)
    expected = found[d2[found, 0] < 0.8 * d2[found, 1]]
    np.testing.assert_array_equal(ratio[:, 0], expected)
    assert 0 < len(expected) < len(found)
    assert putative_matches(q, d[:0], 0.9).shape == (0, 2)


def test_inlier_counts_exact(query):
    q_kpts, q_desc = query
    qf = _feats(q_kpts, q_desc)
    rng = np.random.default_rng(1)
    conf = VerifyConf()
    assert verify_pair(qf, _db_image(rng, q_kpts, q_desc, 40, 20), conf) == 40
    assert verify_pair(qf, _db_image(rng, q_kpts, q_desc, 10, 0), conf) == 10
    assert verify_pair(qf, _db_image(rng, q_kpts, q_desc, 3, 0), conf) == 0  # 3 putative matches: no RANSAC
    assert verify_pair(qf, _db_image(rng, q_kpts, q_desc, 0, 0), conf) == 0
    assert affine_inliers(q_kpts[:3], q_kpts[:3], conf) == 0
    # the distance threshold: every matched descriptor moved to L2 distance 1.05 from its query descriptor
    near = _db_image(rng, q_kpts, q_desc, 40, 0, n_unmatched=0)
    d = near.descriptors.numpy().astype(np.float64)
    u = _unit(rng, 40)
    u -= (u * d).sum(1, keepdims=True) * d
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    theta = 2 * np.arcsin(1.05 / 2)
    moved = _feats(near.keypoints.numpy(), np.cos(theta) * d + np.sin(theta) * u)
    assert verify_pair(qf, moved, conf) == 0
    assert verify_pair(qf, moved, VerifyConf(distance=1.1)) == 40
    assert verify_pair(qf, Features.global_only(np.ones(4) / 2, (8, 8)), conf) == 0  # no keypoints
    no_desc = Features(torch.zeros(5, 2), torch.zeros(5, 0), torch.zeros(5), (8, 8))
    with pytest.raises(ValueError, match="need local features"):
        verify_pair(qf, no_desc, conf)


def test_inliers_equal_opencv_on_noisy_data(query):
    q_kpts, q_desc = query
    qf = _feats(q_kpts, q_desc)
    conf = VerifyConf()
    for seed in range(3):
        db = _db_image(np.random.default_rng(10 + seed), q_kpts, q_desc, 35, 25, noise=6.0)
        m = putative_matches(q_desc, db.descriptors.numpy(), conf.distance)
        src, dst = db.keypoints.numpy()[m[:, 1]].astype(np.float64), q_kpts[m[:, 0]]
        cv2.setRNGSeed(0)
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=20.0, maxIters=1000,
                                       confidence=0.999)
        got = verify_pair(qf, db, conf)
        assert got == int(mask.sum()) and 25 <= got <= 45, (seed, got)


SCORES = np.array([0.8, 0.6, 0.9, 0.5, 0.4, 0.7])  # per database index
RANKING = np.argsort(-SCORES, kind="stable")  # [2, 0, 5, 1, 3, 4]
INLIERS = {2: 0, 0: 5, 5: 30, 1: 0, 3: 2, 4: 50}


def _rerank(conf, exclude=()):
    calls = []

    def inliers_of(j):
        calls.append(j)
        return INLIERS[j]

    res = rerank_verified(RANKING, SCORES, inliers_of, conf, exclude)
    return res, calls


def test_delg_order_and_junk_shortlist():
    res, calls = _rerank(VerifyConf(top=4))
    assert calls == [2, 0, 5, 1]  # the first four of the global ranking, image 4 never verified
    assert res.order.tolist() == [5, 0, 2, 1, 3, 4]
    assert res.inliers.tolist() == [5, 0, 0, 0, 0, 30]
    res, calls = _rerank(VerifyConf(top=4), exclude={0})  # junk 0 leaves the shortlist: 3 enters
    assert calls == [2, 5, 1, 3] and res.verified.tolist() == [2, 5, 1, 3]
    assert res.order.tolist() == [5, 3, 2, 0, 1, 4]  # 3 (2 inliers) above every 0-inlier image
    assert shortlist(RANKING, 3, {2, 5}).tolist() == [0, 1, 3]


def test_min_inliers_rule_and_tie_by_score():
    res, _ = _rerank(VerifyConf(top=4, rule="min-inliers", min_inliers=15))
    assert res.order.tolist() == [5, 2, 0, 1, 3, 4]  # only 30 >= 15 moves; the rest keep the global order
    res, _ = _rerank(VerifyConf(top=6, rule="min-inliers", min_inliers=3))
    assert res.order.tolist() == [4, 5, 0, 2, 1, 3]
    ties = rerank_verified(RANKING, SCORES, lambda j: 7 if j in (1, 3) else 0, VerifyConf(top=6))
    assert ties.order.tolist() == [1, 3, 2, 0, 5, 4]  # equal inliers: higher global score first
    with pytest.raises(ValueError, match="permutation"):
        rerank_verified(RANKING[:3], SCORES, lambda j: 0, VerifyConf())
