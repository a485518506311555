"""The bridge between visloc's files and COLMAP (pycolmap): keypoint convention, models, databases.

Keypoints: visloc (as OpenCV, hloc's feature files and kornia) puts the centre of the top-left pixel
at ``(0, 0)``; COLMAP puts it at ``(0.5, 0.5)``. ``to_colmap_keypoints`` / ``from_colmap_keypoints``
are the only places where the half pixel is added or removed; every keypoint that enters or leaves
a COLMAP object goes through them. (Camera principal points are converted by
``visloc.io.poses.Camera``, whose parameters are already in COLMAP's convention.)

Identifiers: a reference reconstruction built here gives image ``i`` (0-based position in the name
list) the image and frame id ``i + 1``; images with identical intrinsics share a camera (and its
trivial rig). The database written from it reuses these ids, so ``triangulate_points`` can match the two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pycolmap

from visloc.io import features_h5, matches_h5
from visloc.io.poses import Camera, CameraPose

logger = logging.getLogger(__name__)

#: COLMAP's pixel-centre offset relative to visloc's (OpenCV's) convention
COLMAP_PIXEL_OFFSET = 0.5


def to_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints of visloc ``[N, 2]`` (x, y; top-left pixel centre at 0) -> COLMAP's (centre at 0.5), float64."""
    kpts = np.asarray(keypoints, dtype=np.float64)
    if kpts.ndim != 2 or kpts.shape[1] != 2:
        raise ValueError(f"keypoints: expected [N, 2], got {list(kpts.shape)}")
    return kpts + COLMAP_PIXEL_OFFSET


def from_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """COLMAP keypoints ``[N, 2]`` (top-left pixel centre at 0.5) -> visloc's (centre at 0), float64."""
    kpts = np.asarray(keypoints, dtype=np.float64)
    if kpts.ndim != 2 or kpts.shape[1] != 2:
        raise ValueError(f"keypoints: expected [N, 2], got {list(kpts.shape)}")
    return kpts - COLMAP_PIXEL_OFFSET


@contextmanager
def quiet_colmap(verbose: bool = False):  # noqa: ANN201 (generator context manager)
    """Silence COLMAP's glog INFO lines for the duration (restored afterwards) unless ``verbose``."""
    old = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = max(old, 1)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def rigid3d(pose: CameraPose) -> pycolmap.Rigid3d:
    """``cam_from_world`` as a ``pycolmap.Rigid3d``."""
    return pycolmap.Rigid3d(pycolmap.Rotation3d(pose.R), pose.t)


def pose_from_rigid3d(rigid: pycolmap.Rigid3d) -> CameraPose:
    """A ``pycolmap.Rigid3d`` (``cam_from_world``) as a ``CameraPose``."""
    return CameraPose(np.asarray(rigid.rotation.matrix()), np.asarray(rigid.translation))


def reference_reconstruction(names: Sequence[str], poses: Mapping[str, CameraPose],
                             cameras: Mapping[str, Camera]) -> pycolmap.Reconstruction:
    """A reconstruction with the known ``cam_from_world`` of every image and no 3D points.

    Args:
        names: images, in id order (image ``names[i]`` gets id ``i + 1``).
        poses: ``cam_from_world`` of each name.
        cameras: intrinsics of each name (COLMAP models and convention).

    Raises:
        ValueError: naming the first image without a pose or a camera.
    """
    for name in names:
        if name not in poses or name not in cameras:
            raise ValueError(f"{name}: no {'pose' if name not in poses else 'camera'} given for this image")
    return _reconstruction(names, cameras, poses, prior_focal=True)


def unposed_reconstruction(names: Sequence[str], cameras: Mapping[str, Camera],
                           known_intrinsics: bool = False) -> pycolmap.Reconstruction:
    """Cameras, rigs, frames and images (ids as ``reference_reconstruction``) without poses, for a database.

    ``known_intrinsics`` marks the focal lengths as priors, which COLMAP's mapper then keeps fixed
    (else it re-estimates them when registering each image, even with refinement off).
    """
    return _reconstruction(names, cameras, None, known_intrinsics)


def _reconstruction(names: Sequence[str], cameras: Mapping[str, Camera], poses: Mapping[str, CameraPose] | None,
                    prior_focal: bool) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    camera_ids: dict[Camera, int] = {}
    for i, name in enumerate(names, 1):
        camera = cameras[name]
        if camera not in camera_ids:  # images with identical intrinsics share one camera (and rig)
            camera_ids[camera] = len(camera_ids) + 1
            cam = camera.to_pycolmap(camera_id=camera_ids[camera])
            cam.has_prior_focal_length = prior_focal
            rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=name, camera_id=camera_ids[camera], image_id=i)
        if poses is None:
            rec.add_image_with_trivial_frame(image)
        else:
            rec.add_image_with_trivial_frame(image, rigid3d(poses[name]))
    return rec


def default_camera(width: int, height: int) -> Camera:
    """COLMAP's guess without EXIF: ``SIMPLE_RADIAL`` with focal ``1.2 * max(W, H)``, centred, no distortion."""
    f = 1.2 * max(width, height)
    return Camera("SIMPLE_RADIAL", int(width), int(height), (f, width / 2, height / 2, 0.0))


def write_database(path: str | Path, rec: pycolmap.Reconstruction, features: str | Path) -> dict[str, int]:
    """Create a COLMAP database at ``path`` with the cameras, frames and images of ``rec`` and their keypoints.

    Keypoints come from the feature file ``features`` (visloc/hloc layout) and are converted to
    COLMAP's convention. An existing database at ``path`` is replaced.

    Returns:
        ``{image name: image id}``.
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    ids: dict[str, int] = {}
    with pycolmap.Database.open(path) as db:
        for camera in rec.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image_id, image in rec.images.items():
            db.write_image(image, use_image_id=True)
            kpts = features_h5.read_features(features, image.name)["keypoints"]
            db.write_keypoints(image_id, to_colmap_keypoints(kpts).astype(np.float32))
            ids[image.name] = image_id
    return ids


def read_pair_matches(matches: str | Path, pairs: Iterable[tuple[str, str]],
                      ids: Mapping[str, int]) -> dict[tuple[int, int], np.ndarray]:
    """Matches ``[M, 2]`` of each pair of known images as ``{(id0, id1): matches}`` (duplicates merged)."""
    out: dict[tuple[int, int], np.ndarray] = {}
    for name0, name1 in pairs:
        if name0 not in ids or name1 not in ids or name0 == name1:
            continue
        m, _ = matches_h5.read_matches(matches, name0, name1)
        key, m = ((ids[name0], ids[name1]), m) if ids[name0] < ids[name1] else ((ids[name1], ids[name0]), m[:, ::-1])
        out[key] = np.unique(np.concatenate([out[key], m]), axis=0) if key in out else m
    return out


def write_matches(path: str | Path, matches: Mapping[tuple[int, int], np.ndarray],
                  verified: Mapping[tuple[int, int], np.ndarray] | None = None) -> None:
    """Write raw matches, and when given the verified (inlier) matches as two-view geometries.

    Args:
        path: an existing database.
        matches: ``{(id0, id1): [M, 2]}`` keypoint indices.
        verified: ``{(id0, id1): [M', 2]}`` inliers, stored as CALIBRATED two-view geometries.
    """
    with pycolmap.Database.open(Path(path)) as db:
        for (i, j), m in matches.items():
            db.write_matches(i, j, np.ascontiguousarray(m, dtype=np.uint32))
        for (i, j), m in (verified or {}).items():
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = np.ascontiguousarray(m, dtype=np.uint32)
            db.write_two_view_geometry(i, j, geometry)


def image_points3d(rec: pycolmap.Reconstruction, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint indices ``[P]`` of image ``image_id`` that have a 3D point, and their 3D point ids ``[P]``."""
    points2d = rec.images[image_id].points2D
    idx = [k for k, p in enumerate(points2d) if p.has_point3D()]
    return np.array(idx, np.int64), np.array([points2d[k].point3D_id for k in idx], np.int64)
