"""How a query is matched with one database image of a map: with stored features, or with images.

A strategy answers ``pairs(query, name) -> (query_keypoints [M, 2], db_keypoint_index [M])``: the
query's matched keypoints (original pixels, pixel-centre-at-0) and, for each, the index of the
database image's keypoint in the map's feature file, whose 3D point the localizer looks up;
``pairs.place(query, names)`` answers for several database images at once (one matcher call where the
matcher batches: ``Matcher.match_many``), with the results of one call per image.

- ``SparsePairs``: a feature matcher on the query's and the database image's stored features
  (``query.features``); the database keypoint index is the match index.
- ``DensePairs``: an image matcher on the query image and the database image (read from the map's
  image root). Its database-side keypoints are new for every pair, so each is assigned to the map's
  nearest keypoint of that image within ``max_error`` pixels (hloc's ``features_ref`` assignment);
  matches with no map keypoint that close are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import KDTree

from visloc.matching.base import ImageMatcher, Matcher
from visloc.types import Features


@dataclass
class Query:
    """One query to localize.

    Attributes:
        name: the image name.
        features: local features (for sparse matching) and the global descriptor (for retrieval).
        image: for image matchers, the image itself (``[H, W, 3]`` float32 in ``[0, 1]``).
    """

    name: str
    features: Features
    image: np.ndarray | None = None


class SparsePairs:
    """Stored features + a feature matcher (``matching.base.Matcher``)."""

    def __init__(self, db_features: Callable[[str], Features], matcher: torch.nn.Module,
                 device: torch.device | str = "cpu") -> None:
        self.db_features, self.matcher, self.device = db_features, matcher, torch.device(device)

    def __call__(self, query: Query, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Matched query keypoints ``[M, 2]`` and database keypoint indices ``[M]``."""
        return self.place(query, [name])[0]

    def place(self, query: Query, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``__call__`` for each of ``names``, matched in one ``match_many`` call."""
        q = query.features.to(self.device)
        with torch.inference_mode():
            if isinstance(self.matcher, Matcher):
                found = self.matcher.match_many(q, [self.db_features(n).to(self.device) for n in names])
            else:  # any module with the feature matcher's forward
                found = [self.matcher(q, self.db_features(n).to(self.device)) for n in names]
        kq = query.features.keypoints.numpy()
        return [(kq[m[:, 0]].astype(np.float64), m[:, 1]) for m, _ in (f.numpy() for f in found)]


class DensePairs:
    """Images + an image matcher, database keypoints assigned to the map's within ``max_error`` px."""

    def __init__(self, db_image: Callable[[str], np.ndarray], db_keypoints: Callable[[str], np.ndarray],
                 matcher: torch.nn.Module, max_error: float = 2.0, device: torch.device | str = "cpu") -> None:
        if not max_error > 0:
            raise ValueError(f"max_error: expected > 0 pixels, got {max_error}")
        if not isinstance(matcher, ImageMatcher):  # MATCHERS.build gives an nn.Module
            raise TypeError(f"matcher: expected an ImageMatcher, got {type(matcher).__name__}")
        self.db_image, self.db_keypoints, self.matcher = db_image, db_keypoints, matcher
        self.max_error, self.device = float(max_error), torch.device(device)
        self._trees: dict[str, KDTree] = {}

    def place(self, query: Query, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``__call__`` for each of ``names`` (image matchers take one pair at a time)."""
        return [self(query, n) for n in names]

    def _tree(self, name: str) -> KDTree:
        if name not in self._trees:
            if len(self._trees) > 256:
                self._trees.clear()
            self._trees[name] = KDTree(np.asarray(self.db_keypoints(name), np.float64).reshape(-1, 2))
        return self._trees[name]

    def __call__(self, query: Query, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Matched query keypoints ``[M, 2]`` and the assigned database keypoint indices ``[M]``."""
        from visloc.matching.api import match_images

        if query.image is None:
            raise ValueError(f"{query.name}: an image matcher needs the query image")
        pred = match_images(self.matcher, query.image, self.db_image(name), device=self.device)
        m, _ = pred.numpy()
        if pred.keypoints0 is None or pred.keypoints1 is None or not len(m):
            return np.zeros((0, 2)), np.zeros(0, np.int64)
        kq = pred.keypoints0.numpy()[m[:, 0]].astype(np.float64)
        kdb = pred.keypoints1.numpy()[m[:, 1]].astype(np.float64)
        tree = self._tree(name)
        if tree.n == 0:
            return np.zeros((0, 2)), np.zeros(0, np.int64)
        dist, idx = tree.query(kdb, distance_upper_bound=self.max_error)
        keep = np.isfinite(dist)
        return kq[keep], np.asarray(idx)[keep].astype(np.int64)  # [M] for the [M, 2] query
