"""Hierarchical localization of one query image against a map (HF-Net / hloc's coarse-to-fine scheme).

1. **Retrieval**: the query's global descriptor finds the ``num_retrieved`` most similar database images.
2. **Places**: the retrieved images are grouped by covisibility (``covisibility.covisibility_clusters``);
   places are tried in order, largest first, at most ``max_places`` of them.
3. **Matching**: the query's local features are matched with each image of the place; a query keypoint
   matched to a database keypoint that has a 3D point gives a 2D-3D correspondence.
4. **Pose**: ``pycolmap.estimate_and_refine_absolute_pose`` (P3P in LO-RANSAC, then non-linear
   refinement). A place whose pose has fewer than ``min_inliers`` inliers (or an inlier ratio below
   ``min_inlier_ratio``) is rejected and the next one tried; when none passes, the query is *failed*:
   it gets no pose, and its record says why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pycolmap

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.io.poses import Camera, CameraPose
from visloc.localization.colmap import image_points3d, pose_from_rigid3d, to_colmap_keypoints
from visloc.localization.covisibility import covisibility_clusters, reconstruction_observations
from visloc.localization.pair_matching import Query
from visloc.retrieval.index import RetrievalIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizerConf:
    """How a query is localized.

    Attributes:
        num_retrieved: database images retrieved per query.
        covisibility: group the retrieved images into places (else one place holds them all).
        max_places: places tried per query, in order.
        min_shared: common 3D points that connect two retrieved images.
        max_error: RANSAC inlier threshold of the absolute pose, pixels.
        min_inliers: fewer pose inliers reject a place.
        min_inlier_ratio: a smaller ratio of inliers to 2D-3D matches rejects a place (0.2: on the built-in
            scene the HF-Net student's two wrong poses had 0.12 and 0.16, its correct ones 0.25 and more).
        seed: RANSAC seed (-1: random).
    """

    num_retrieved: int = 10
    covisibility: bool = True
    max_places: int = 3
    min_shared: int = 1
    max_error: float = 12.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_retrieved", "max_places", "min_shared", "min_inliers"):
            if getattr(self, key) < 1:
                raise ConfError(f"LocalizerConf.{key} must be >= 1, got {getattr(self, key)}")
        ranges.at_least(self, 1, "num_retrieved", "max_places", "min_shared", "min_inliers")  # finite
        ranges.above(self, 0, "max_error")
        ranges.between(self, 0, 1, "min_inlier_ratio")
        ranges.at_least(self, -1, "seed")


@dataclass
class QueryResult:
    """The outcome for one query; ``pose is None`` means failed, with ``reason`` saying why.

    Attributes:
        name: query image name.
        pose: ``cam_from_world`` in the map's frame, or None.
        retrieved: database images retrieved, best first.
        places: the places (lists of database names) in the order tried.
        place: index in ``places`` of the place that gave the pose, or None.
        num_matches: 2D-3D correspondences of the last place tried.
        num_inliers: pose inliers of the last place tried.
        reason: why the query failed ("" when localized).
        timings: seconds per stage, the stage names of ``eval.localization.STAGES``: ``global`` (retrieval
            search), ``matching``, ``pnp``; the pipeline adds ``local`` (feature extraction) and its global
            descriptor time.
        camera: the query camera (COLMAP convention), with the estimated focal length when it was unknown.
    """

    name: str
    pose: CameraPose | None = None
    retrieved: list[str] = field(default_factory=list)
    places: list[list[str]] = field(default_factory=list)
    place: int | None = None
    num_matches: int = 0
    num_inliers: int = 0
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    camera: Camera | None = None

    @property
    def ok(self) -> bool:
        """Whether a pose was found."""
        return self.pose is not None

    def record(self) -> dict[str, Any]:
        """JSON-ready log record (the per-query line of the localization log)."""
        out: dict[str, Any] = {"name": self.name, "success": self.ok, "reason": self.reason,
                               "retrieved": self.retrieved, "places": self.places, "place": self.place,
                               "num_matches": self.num_matches, "num_inliers": self.num_inliers,
                               "timings": {k: round(v, 4) for k, v in self.timings.items()}}
        if self.camera is not None:
            out["camera"] = self.camera.line()
        if self.pose is not None:
            out["qvec"], out["tvec"] = self.pose.qvec.tolist(), self.pose.t.tolist()
        return out


class PairMatching(Protocol):
    """A pair-matching strategy (``pair_matching.SparsePairs`` or ``DensePairs``)."""

    def __call__(self, query: Query, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Matched query keypoints ``[M, 2]`` and database keypoint indices ``[M]``."""
        ...

    def place(self, query: Query, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``__call__`` for each of ``names``, in one matcher call where the matcher batches."""
        ...


class Localizer:
    """Localizes queries against a map: a reconstruction, a pair-matching strategy and a retrieval index."""

    def __init__(self, rec: pycolmap.Reconstruction, pairs: PairMatching, index: RetrievalIndex,
                 conf: LocalizerConf | None = None) -> None:
        """Wrap the map's parts.

        Args:
            rec: the map's reconstruction (its images' keypoints are the feature file's, +0.5).
            pairs: matches a query with a database image (``pair_matching.SparsePairs`` with stored
                features and a feature matcher, or ``DensePairs`` with images and an image matcher).
            index: global descriptors of the database images.
            conf: localization settings.
        """
        self.rec, self.pairs, self.index = rec, pairs, index
        self.conf = conf or LocalizerConf()
        self._ids = {image.name: image_id for image_id, image in rec.images.items() if image.has_pose}
        self._points: dict[int, np.ndarray] = {}

    def _point_lookup(self, image_id: int) -> np.ndarray:
        """``[N]`` 3D point id of each keypoint of a database image (-1: none)."""
        if image_id not in self._points:
            idx, pids = image_points3d(self.rec, image_id)
            lookup = np.full(self.rec.images[image_id].num_points2D(), -1, np.int64)
            lookup[idx] = pids
            self._points[image_id] = lookup
        return self._points[image_id]

    def places(self, retrieved: list[str]) -> list[list[str]]:
        """Retrieved database names (those in the model) grouped into places, in the order to try."""
        ids = [self._ids[n] for n in retrieved if n in self._ids]
        if not ids:
            return []
        if not self.conf.covisibility:
            groups = [ids]
        else:
            groups = covisibility_clusters(ids, reconstruction_observations(self.rec, ids), self.conf.min_shared)
        return [[self.rec.images[i].name for i in g] for g in groups[: self.conf.max_places]]

    def correspondences(self, query: Query, place: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """2D-3D matches of the query with one place: ``(keypoints [M, 2] visloc convention, points [M, 3])``."""
        kpts, xyz = [], []
        for name, (kq, db_idx) in zip(place, self.pairs.place(query, place), strict=True):
            lookup = self._point_lookup(self._ids[name])
            if len(db_idx) and int(db_idx.max()) >= len(lookup):
                raise ValueError(f"{name}: matched keypoint {int(db_idx.max())} is not in the map "
                                 f"({len(lookup)} keypoints): the features do not belong to this map")
            pids = lookup[db_idx]
            kpts.append(kq[pids >= 0])
            xyz += [self.rec.points3D[int(p)].xyz for p in pids[pids >= 0]]
        points = np.asarray(xyz, np.float64).reshape(-1, 3)
        return np.concatenate(kpts).astype(np.float64) if kpts else np.zeros((0, 2)), points

    def estimate(self, kpts: np.ndarray, points: np.ndarray, camera: Camera,
                 estimate_focal: bool = False) -> tuple[CameraPose | None, int, Camera]:
        """LO-RANSAC absolute pose + refinement of ``kpts [M, 2]`` (visloc convention) and ``points [M, 3]``.

        Returns:
            ``(cam_from_world or None, inliers, camera)``; the camera has the estimated focal length when
            ``estimate_focal``, else it is ``camera``.
        """
        if len(kpts) < 4:
            return None, 0, camera
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = self.conf.max_error
        est.estimate_focal_length = estimate_focal
        if self.conf.seed >= 0:
            est.ransac.random_seed = self.conf.seed
        ref = pycolmap.AbsolutePoseRefinementOptions()
        ref.refine_focal_length = estimate_focal
        cam = camera.to_pycolmap()
        ret = pycolmap.estimate_and_refine_absolute_pose(to_colmap_keypoints(kpts), points, cam, est, ref)
        if ret is None:
            return None, 0, camera
        if estimate_focal:  # pycolmap refines the focal length of ``cam`` in place
            camera = Camera(camera.model, camera.width, camera.height, tuple(cam.params))
        return pose_from_rigid3d(ret["cam_from_world"]), int(ret["num_inliers"]), camera

    def localize(self, query: Query, camera: Camera, estimate_focal: bool = False) -> QueryResult:
        """Localize one query.

        Args:
            query: its name, its features (with ``global_descriptor``; local ones for sparse matching)
                and, for image matchers, its image.
            camera: its intrinsics (COLMAP convention).
            estimate_focal: the focal length is unknown: estimate it with the pose.
        """
        res = QueryResult(query.name, camera=camera)
        start = time.perf_counter()
        g = query.features.global_descriptor
        if g is None:
            res.reason = "no global descriptor"
            return res
        found, _ = self.index.search(g.numpy()[None], min(self.conf.num_retrieved, len(self.index)))
        res.retrieved = found[0]
        res.places = self.places(res.retrieved)
        res.timings = {"global": time.perf_counter() - start, "matching": 0.0, "pnp": 0.0}
        res.reason = "no retrieved image is in the model"
        best = (0, 0)
        for i, place in enumerate(res.places):
            start = time.perf_counter()
            kpts, points = self.correspondences(query, place)
            res.timings["matching"] += time.perf_counter() - start
            start = time.perf_counter()
            pose, res.num_inliers, refined = self.estimate(kpts, points, camera, estimate_focal)
            res.timings["pnp"] += time.perf_counter() - start
            res.num_matches = len(kpts)
            ratio = res.num_inliers / max(len(kpts), 1)
            if pose is not None and res.num_inliers >= self.conf.min_inliers and ratio >= self.conf.min_inlier_ratio:
                res.pose, res.place, res.reason, res.camera = pose, i, "", refined
                break
            best = max(best, (res.num_inliers, len(kpts)))
            res.reason = (f"no place gave an accepted pose ({len(res.places[: i + 1])} tried; best {best[0]} inliers "
                          f"of {best[1]} 2D-3D matches, need {self.conf.min_inliers} and ratio "
                          f">= {self.conf.min_inlier_ratio})")
        return res
