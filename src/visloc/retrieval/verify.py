"""Geometric-verification re-ranking with DELG's rules (``delf/python/detect_to_retrieve/image_reranking.py``).

For one query and one ground-truth protocol:

1. **Shortlist**: the first ``top`` (100) database images of the global ranking once the protocol's
   junk images are removed (``exclude``), so Medium and Hard are re-ranked separately.
2. **Putative matches**: each query descriptor's nearest database-image descriptor (L2) when closer than
   ``distance`` (DELG: 1.0 for its L2-normalised 128-d descriptors; DELF: 0.9), optionally a ratio test.
   Several query descriptors may match the same database descriptor, as with DELF's ``cKDTree`` query.
3. **Affine RANSAC** (OpenCV ``estimateAffine2D``, RANSAC, ``residual`` 20 px, 1000 iterations), mapping
   database keypoints onto query keypoints in each image's own original pixels; fewer than 4 putative
   matches give 0 inliers.
4. **Order**: ``rule="delg"`` sorts every database image by ``(inliers, global score)`` descending, so an
   image with one inlier moves above every image with none; ``rule="min-inliers"`` (the project's rule of
   ``retrieval.rerank``) promotes only images with at least ``min_inliers`` inliers, by inlier count,
   the others keeping their global order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.geometry.estimators import Estimator, EstimatorConf
from visloc.types import Features

VerifyRule = Literal["delg", "min-inliers"]
MIN_MATCHES = 4  # DELF: "<= _MIN_RANSAC_SAMPLES (3)" putative matches give 0


@dataclass(frozen=True)
class VerifyConf:
    """DELG-style geometric verification of each query's shortlist.

    Attributes:
        top: database images verified per query (the first ``top`` after removing junk); 0: none.
        rule: ``delg`` (sort by inliers, then global score) or ``min-inliers`` (module docstring).
        distance: L2 distance below which a descriptor's nearest neighbour is a putative match.
        ratio: Lowe's ratio test (nearest < ratio * second nearest) on top of ``distance``; None: off.
        residual: RANSAC inlier threshold in pixels (in query-image pixels).
        iterations: RANSAC iterations.
        confidence: RANSAC confidence (OpenCV may stop early once it is reached).
        seed: OpenCV RNG seed set before each estimation.
        min_inliers: with ``rule="min-inliers"``: fewer inliers do not promote an image.
    """

    top: int = 100
    rule: VerifyRule = "delg"
    distance: float = 1.0
    ratio: float | None = None
    residual: float = 20.0
    iterations: int = 1000
    confidence: float = 0.999
    seed: int = 0
    min_inliers: int = 15

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 0:
            raise ConfError(f"VerifyConf.top: expected an integer >= 0, got {self.top!r}")
        if self.rule not in get_args(VerifyRule):
            raise ConfError(f"VerifyConf.rule: expected delg or min-inliers, got {self.rule!r}")
        if not self.distance > 0:
            raise ConfError(f"VerifyConf.distance: expected > 0, got {self.distance}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfError(f"VerifyConf.ratio: expected in (0, 1] or none, got {self.ratio}")
        if not self.residual > 0:
            raise ConfError(f"VerifyConf.residual: expected > 0 pixels, got {self.residual}")
        if self.iterations < 1 or not 0 < self.confidence < 1:
            raise ConfError(f"VerifyConf.iterations / confidence: expected >= 1 and in (0, 1), got "
                            f"{self.iterations}, {self.confidence}")
        if self.min_inliers < 0:
            raise ConfError(f"VerifyConf.min_inliers: expected >= 0, got {self.min_inliers}")
        ranges.above(self, 0, "distance", "residual")  # the checks above let inf through
        ranges.at_least(self, 1, "iterations")
        ranges.at_least(self, 0, "min_inliers")

    @property
    def enabled(self) -> bool:
        """True when verification runs (``top > 0``)."""
        return self.top > 0


def putative_matches(query_desc: np.ndarray, db_desc: np.ndarray, distance: float,
                     ratio: float | None = None) -> np.ndarray:
    """``[P, 2]`` int64 ``(query index, db index)``: each query descriptor's exact L2 nearest neighbour.

    Args:
        query_desc: ``[N, D]`` query descriptors.
        db_desc: ``[M, D]`` database-image descriptors.
        distance: keep a neighbour strictly closer than this (as ``cKDTree.query(distance_upper_bound=)``).
        ratio: also require ``d1 < ratio * d2`` (second neighbour ``d2``; none: passes); None: off.

    Brute force in float64 (``|a|^2 + |b|^2 - 2 a.b``); ties go to the lower database index.
    """
    q, d = np.asarray(query_desc, np.float64), np.asarray(db_desc, np.float64)
    if q.ndim != 2 or d.ndim != 2 or (len(q) and len(d) and q.shape[1] != d.shape[1]):
        raise ValueError(f"descriptors: expected [N, D] and [M, D], got {list(q.shape)} and {list(d.shape)}")
    if len(q) == 0 or len(d) == 0:
        return np.zeros((0, 2), np.int64)
    sq = np.maximum((q * q).sum(1)[:, None] + (d * d).sum(1)[None] - 2.0 * (q @ d.T), 0.0)
    nn = np.argmin(sq, axis=1)
    d1 = np.sqrt(sq[np.arange(len(q)), nn])
    keep = d1 < distance
    if ratio is not None and len(d) > 1:
        second = np.sqrt(np.partition(sq, 1, axis=1)[:, 1])
        keep &= d1 < ratio * second
    idx = np.flatnonzero(keep)
    return np.stack([idx, nn[idx]], 1).astype(np.int64)


def affine_inliers(query_kpts: np.ndarray, db_kpts: np.ndarray, conf: VerifyConf) -> int:
    """Inliers of OpenCV's RANSAC affine fit mapping ``db_kpts [P, 2]`` onto ``query_kpts [P, 2]`` (pixels).

    Fewer than 4 correspondences give 0 (DELF's rule); the RNG is seeded with ``conf.seed`` first, so a
    pair's count does not depend on what was verified before it.
    """
    if len(query_kpts) != len(db_kpts):
        raise ValueError(f"keypoints: expected as many query as database points, got {len(query_kpts)} "
                         f"and {len(db_kpts)}")
    if len(query_kpts) < MIN_MATCHES:
        return 0
    estimator = Estimator(EstimatorConf("affine", "ransac", float(conf.residual), float(conf.confidence),
                                        int(conf.iterations), MIN_MATCHES))
    cv2.setRNGSeed(int(conf.seed))
    return estimator(np.asarray(db_kpts, np.float64), np.asarray(query_kpts, np.float64)).num_inliers


def verify_pair(query: Features, db: Features, conf: VerifyConf) -> int:
    """Inliers between two images' local features (``putative_matches`` then ``affine_inliers``)."""
    if query.num_keypoints == 0 or db.num_keypoints == 0:
        return 0
    if not query.has_local or not db.has_local:
        raise ValueError("verify_pair: both images need local features (descriptors [N, D] with D > 0)")
    m = putative_matches(query.descriptors.numpy(), db.descriptors.numpy(), conf.distance, conf.ratio)
    if len(m) < MIN_MATCHES:
        return 0
    return affine_inliers(query.keypoints.numpy()[m[:, 0]], db.keypoints.numpy()[m[:, 1]], conf)


@dataclass(frozen=True)
class VerifiedRanking:
    """One query's re-ranked list.

    Attributes:
        order: ``[db]`` database indices, best first (every database image).
        inliers: ``[db]`` inlier count per database index (0 where not verified).
        verified: database indices of the shortlist, in global order.
    """

    order: np.ndarray
    inliers: np.ndarray
    verified: np.ndarray


def shortlist(ranking: np.ndarray, top: int, exclude: Collection[int] = ()) -> np.ndarray:
    """The first ``top`` database indices of ``ranking [db]`` that are not in ``exclude``."""
    r = np.asarray(ranking, np.int64)
    keep = ~np.isin(r, np.fromiter(exclude, np.int64, len(exclude)))
    return r[keep][:top]


def rerank_verified(ranking: np.ndarray, scores: np.ndarray, inliers_of: Callable[[int], int], conf: VerifyConf,
                    exclude: Collection[int] = ()) -> VerifiedRanking:
    """Verify a query's shortlist and re-order its whole ranking (module docstring).

    Args:
        ranking: ``[db]`` every database index, best first by the global score.
        scores: ``[db]`` global similarity per database *index* (not per rank).
        inliers_of: inlier count of the query with a database index (e.g. ``verify_pair``, cached).
        conf: ``top``, ``rule`` and ``min_inliers`` are used here.
        exclude: database indices left out of the shortlist (the protocol's junk); they stay in the
            output, with 0 inliers.
    """
    r = np.asarray(ranking, np.int64)
    s = np.asarray(scores, np.float64)
    if r.ndim != 1 or s.shape != (len(r),) or not np.array_equal(np.sort(r), np.arange(len(r))):
        raise ValueError(f"ranking, scores: expected a permutation of the {len(s)} database indices and one "
                         f"score per index, got shapes {list(r.shape)} and {list(s.shape)}")
    short = shortlist(r, conf.top, exclude)
    inliers = np.zeros(len(r), np.int64)
    for j in short:
        inliers[j] = int(inliers_of(int(j)))
    position = np.empty(len(r), np.int64)
    position[r] = np.arange(len(r))
    if conf.rule == "delg":  # sorted(..., key=(inliers, score), reverse=True); ties: global order
        order = np.lexsort((position, -s, -inliers))
    else:
        promoted = np.where(inliers >= conf.min_inliers, inliers, 0)
        order = np.lexsort((position, -promoted))
    return VerifiedRanking(order.astype(np.int64), inliers, short)
