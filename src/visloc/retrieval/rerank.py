"""Spatial re-ranking: re-score retrieved database images by the inliers of a geometric model.

For each of the top ``K`` database images of a query, local features are matched (any registered
matcher) and a model (homography, fundamental or affine, ``geometry.estimators``) is fitted; the
``K`` images are re-ordered by their inlier count, ties keeping the global order. Results after
``K`` stay as they were. ``RerankConf`` holds the settings of the retrieval pipelines' re-ranking
(``pipelines.retrieve.rerank_pairs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.geometry.estimators import ESTIMATORS, Estimate
from visloc.matching.base import Matcher
from visloc.types import Features

RerankModel = Literal["homography", "fundamental", "affine"]
RerankRule = Literal["min-inliers", "delg"]


@dataclass(frozen=True)
class RerankConf:
    """Spatial re-ranking of each query's first ``top`` retrieved images (``top=0``: off).

    Attributes:
        top: re-order each query's first ``top`` results by inliers; 0 turns re-ranking off.
        db_features: feature file of the database images (their local features); needed when ``top > 0``.
        model: ``homography``, ``fundamental`` or ``affine``.
        threshold: inlier threshold in pixels; None: the registered estimator's default.
        matcher: registered feature matcher; LightGlue's weights follow the features' extractor.
        matcher_overrides: matcher conf overrides, ``key=value`` strings.
        min_inliers: fewer inliers than this do not promote an image (see ``rerank``).
        rule: ``min-inliers`` (the above) or ``delg``: every image with an inlier moves up, by inlier count
            (``retrieval.verify``'s DELG rule; ``min_inliers`` is then unused).
    """

    top: int = 0
    db_features: Path | None = None
    model: RerankModel = "homography"
    threshold: float | None = None
    matcher: str = "nn-mutual"
    matcher_overrides: tuple[str, ...] = ()
    min_inliers: int = 15
    rule: RerankRule = "min-inliers"

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 0:
            raise ConfError(f"rerank: expected an integer >= 0, got {self.top!r}")
        if self.model not in get_args(RerankModel):
            raise ConfError(f"rerank model: expected homography, fundamental or affine, got {self.model!r}")
        if self.threshold is not None and not self.threshold > 0:
            raise ConfError(f"rerank threshold: expected > 0 pixels, got {self.threshold}")
        if self.min_inliers < 0:
            raise ConfError(f"rerank min_inliers: expected >= 0, got {self.min_inliers}")
        if self.rule not in get_args(RerankRule):
            raise ConfError(f"rerank rule: expected min-inliers or delg, got {self.rule!r}")
        ranges.above(self, 0, "threshold")  # the checks above let inf through
        ranges.at_least(self, 0, "min_inliers")
        if self.top and self.db_features is None:
            raise ConfError("rerank: needs the database feature file (--db-features) for local features")
        if self.db_features is not None:
            object.__setattr__(self, "db_features", Path(self.db_features))
        object.__setattr__(self, "matcher_overrides", tuple(self.matcher_overrides))

    @property
    def enabled(self) -> bool:
        """True when re-ranking runs (``top > 0``)."""
        return self.top > 0


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
           min_inliers: int = 15, rule: RerankRule = "min-inliers") -> RerankResult:
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
        rule: ``min-inliers`` (above) or ``delg``: any inlier promotes (DELG's order; ties by global order).

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
    if rule not in get_args(RerankRule):
        raise ValueError(f"rule: expected min-inliers or delg, got {rule!r}")
    estimator = ESTIMATORS.build(model, {"threshold": float(threshold)})
    inliers = np.array([count_inliers(query_feats, f, matcher, estimator) for f in db_feats_list], np.int64)
    verified = inliers if rule == "delg" else np.where(inliers >= min_inliers, inliers, 0)
    order = np.argsort(-verified, kind="stable")
    return RerankResult(order, inliers)
