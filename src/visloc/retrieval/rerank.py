"""Spatial re-ranking: re-score retrieved database images by the inliers of a geometric model.

For each of the top ``K`` database images of a query, local features are matched (any registered
matcher) and a model (homography, fundamental or affine, ``geometry.estimators``) is fitted; the
``K`` images are re-ordered by their inlier count, ties keeping the global order. Results after
``K`` stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from visloc.geometry.estimators import ESTIMATORS, Estimate
from visloc.matching.base import Matcher
from visloc.types import Features

RerankModel = Literal["homography", "fundamental", "affine"]


@dataclass(frozen=True)
class RerankResult:
    """``order[i]`` is the input position of the image now at rank ``i``; ``inliers`` per input position."""

    order: np.ndarray
    inliers: np.ndarray

    def names(self, db_names: Sequence[str]) -> list[str]:
        """``db_names`` in the new order."""
        return [db_names[int(i)] for i in self.order]


def count_inliers(query_feats: Features, db_feats: Features, matcher: Matcher,
                  estimator: Callable[[np.ndarray, np.ndarray], Estimate]) -> int:
    """Inliers of ``estimator`` on the ``matcher``'s matches between two images' local features."""
    with torch.inference_mode():
        m, _ = matcher(query_feats, db_feats).numpy()
    if len(m) == 0:
        return 0
    est = estimator(query_feats.keypoints.numpy()[m[:, 0]], db_feats.keypoints.numpy()[m[:, 1]])
    return int(est.num_inliers)


def rerank(query_feats: Features, db_feats_list: Sequence[Features],
           db_names: Sequence[str], model: RerankModel, threshold: float, matcher: Matcher,
           min_inliers: int = 15) -> RerankResult:
    """Re-order retrieved database images by the inliers of ``model`` with the query.

    Args:
        query_feats: the query's local features (``features_h5.load_features``).
        db_feats_list: the local features of the images to re-rank, in their global order.
        db_names: their names (for error messages; same length).
        model: ``homography``, ``fundamental`` or ``affine``.
        threshold: inlier threshold in pixels.
        matcher: a built matcher.
        min_inliers: images verified by at least this many inliers move to the front, by inlier count;
            the others keep their global order behind them. Unrelated images reach about 5-10
            inliers by chance, so promoting on raw counts shuffles hard positives with noise.

    Returns:
        The new order (stable: equal inlier counts keep the global order) and the inlier counts.
    """
    if len(db_feats_list) != len(db_names):
        raise ValueError(f"db_names: expected {len(db_feats_list)} names (one per feature set), got {len(db_names)}")
    if model not in ("homography", "fundamental", "affine"):
        raise ValueError(f"model: expected homography, fundamental or affine, got {model!r}")
    if not threshold > 0:
        raise ValueError(f"threshold: expected > 0 pixels, got {threshold}")
    if min_inliers < 0:
        raise ValueError(f"min_inliers: expected >= 0, got {min_inliers}")
    estimator = ESTIMATORS.build(model, {"threshold": float(threshold)})
    inliers = np.array([count_inliers(query_feats, f, matcher, estimator) for f in db_feats_list], np.int64)
    verified = np.where(inliers >= min_inliers, inliers, 0)
    order = np.argsort(-verified, kind="stable")
    return RerankResult(order, inliers)
