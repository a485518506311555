"""3D points from known camera poses: verify matches with the known geometry, then triangulate with COLMAP.

The poses are ground truth, so no RANSAC is needed to verify a pair: a match is kept when its
Sampson distance to the epipolar geometry of the known relative pose is below
``max_epipolar_error`` pixels. The verified matches become CALIBRATED two-view geometries of a
COLMAP database, and ``pycolmap.triangulate_points`` builds tracks and points on the reference
reconstruction, with the poses (and intrinsics) held fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from visloc import conf_ranges as ranges
from visloc.io import features_h5
from visloc.localization.colmap import quiet_colmap, to_colmap_keypoints

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriangulationConf:
    """How matches become 3D points when the poses are known.

    Attributes:
        max_epipolar_error: Sampson distance in pixels above which a match is dropped.
        min_verified_matches: pairs with fewer verified matches are not used.
        ignore_two_view_tracks: COLMAP does not create points seen by two images only.
        min_angle: smallest triangulation angle in degrees.
        max_reprojection_error: COLMAP's merge/complete reprojection error in pixels.
    """

    max_epipolar_error: float = 4.0
    min_verified_matches: int = 15
    ignore_two_view_tracks: bool = True
    min_angle: float = 1.5
    max_reprojection_error: float = 4.0

    def __post_init__(self) -> None:
        ranges.above(self, 0, "max_epipolar_error", "max_reprojection_error")
        ranges.at_least(self, 1, "min_verified_matches")
        ranges.between(self, 0, 180, "min_angle")


def sampson_distance(points0: np.ndarray, points1: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Sampson distance ``[M]`` of normalised points ``[M, 2]`` to the essential matrix ``E`` (``x1^T E x0 = 0``)."""
    x0 = np.concatenate([points0, np.ones((len(points0), 1))], 1)
    x1 = np.concatenate([points1, np.ones((len(points1), 1))], 1)
    Ex0, Etx1 = x0 @ E.T, x1 @ E
    num = np.sum(x1 * Ex0, 1)
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-30))


def _essential(image0: pycolmap.Image, image1: pycolmap.Image) -> np.ndarray:
    """``E`` with ``x1^T E x0 = 0`` for normalised points of the two images (``cam1_from_cam0``)."""
    rel = image1.cam_from_world() * image0.cam_from_world().inverse()
    R, t = np.asarray(rel.rotation.matrix()), np.asarray(rel.translation)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return tx @ R


def _camera(rec: pycolmap.Reconstruction, image_id: int) -> pycolmap.Camera:
    camera = rec.images[image_id].camera  # None for an image whose camera is not in ``rec``
    if camera is None:
        raise ValueError(f"image {image_id} ({rec.images[image_id].name}): its camera is not in the reconstruction")
    return camera


def verify_with_poses(rec: pycolmap.Reconstruction, features: str | Path,
                      matches: Mapping[tuple[int, int], np.ndarray],
                      conf: TriangulationConf) -> dict[tuple[int, int], np.ndarray]:
    """The matches of each image pair that agree with the pair's known epipolar geometry.

    Args:
        rec: reconstruction with the known poses and cameras (ids as in ``matches``).
        features: feature file with the images' keypoints (visloc convention).
        matches: ``{(id0, id1): [M, 2]}`` keypoint indices.
        conf: ``max_epipolar_error`` (pixels, scaled by each camera's mean focal) and
            ``min_verified_matches``.

    Returns:
        ``{(id0, id1): [M', 2]}`` for the pairs keeping at least ``min_verified_matches``.
    """
    normalised: dict[int, np.ndarray] = {}

    def points(image_id: int) -> np.ndarray:
        if image_id not in normalised:
            kpts = features_h5.read_features(features, rec.images[image_id].name)["keypoints"]
            normalised[image_id] = np.asarray(_camera(rec, image_id).cam_from_img(to_colmap_keypoints(kpts)))
        return normalised[image_id]

    out: dict[tuple[int, int], np.ndarray] = {}
    for (i, j), m in matches.items():
        if len(m) == 0:
            continue
        focal = 0.5 * (_camera(rec, i).mean_focal_length() + _camera(rec, j).mean_focal_length())
        err = sampson_distance(points(i)[m[:, 0]], points(j)[m[:, 1]], _essential(rec.images[i], rec.images[j])) * focal
        keep = m[err < conf.max_epipolar_error]
        if len(keep) >= conf.min_verified_matches:
            out[(i, j)] = keep
    logger.info("verified %d of %d pairs with the known poses", len(out), len(matches))
    return out


def pipeline_options(conf: TriangulationConf) -> pycolmap.IncrementalPipelineOptions:
    """COLMAP options carrying ``conf``'s triangulation thresholds."""
    options = pycolmap.IncrementalPipelineOptions()
    tri = options.triangulation
    tri.ignore_two_view_tracks = conf.ignore_two_view_tracks
    tri.min_angle = conf.min_angle
    tri.merge_max_reproj_error = conf.max_reprojection_error
    tri.complete_max_reproj_error = conf.max_reprojection_error
    options.mapper.filter_max_reproj_error = conf.max_reprojection_error
    options.mapper.filter_min_tri_angle = conf.min_angle
    return options


def triangulate(reference: pycolmap.Reconstruction, database: str | Path, image_dir: str | Path,
                out: str | Path, conf: TriangulationConf | None = None,
                verbose: bool = False) -> pycolmap.Reconstruction:
    """Triangulate the verified matches of ``database`` with the fixed poses of ``reference``.

    Args:
        reference: poses and cameras; its ids match the database's (``colmap.write_database``).
        database: COLMAP database with keypoints and two-view geometries.
        image_dir: image root (COLMAP reads colours from it).
        out: folder where the model is written (COLMAP binary format).
        conf: thresholds.
        verbose: let COLMAP log at INFO level.

    Returns:
        The reconstruction with its 3D points.
    """
    conf = conf or TriangulationConf()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_colmap(verbose):
        rec = pycolmap.triangulate_points(reference, Path(database), Path(image_dir), out, clear_points=True,
                                          options=pipeline_options(conf), refine_intrinsics=False)
    logger.info("triangulated %d points in %d images", rec.num_points3D(), rec.num_reg_images())
    return rec
