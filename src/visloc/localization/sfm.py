"""Structure from motion for images without poses: COLMAP's geometric verification and incremental mapping.

The database (``colmap.write_database`` + ``colmap.write_matches`` with raw matches only) is
verified by ``pycolmap.verify_matches`` (RANSAC on the essential / fundamental matrix or a
homography), then ``pycolmap.incremental_mapping`` registers images one by one. The largest model
(most registered images) is kept. The poses are in an arbitrary frame and scale.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pycolmap

from visloc import conf_ranges as ranges
from visloc.errors import VislocError
from visloc.io.pairs import write_pairs
from visloc.localization.colmap import quiet_colmap


class SfMError(VislocError, ValueError):
    """Incremental mapping that registered no model."""


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SfMConf:
    """Incremental mapping settings.

    Attributes:
        max_error: RANSAC threshold of the two-view verification, pixels.
        min_num_inliers: pairs with fewer verified matches are ignored.
        min_model_size: smallest model COLMAP keeps, in images.
        refine_intrinsics: refine focal length and distortion (registration and bundle adjustment); None:
            only when the intrinsics are guesses (``reconstruct(known_intrinsics=False)``).
        seed: COLMAP's random seed (-1: random), for reproducible models.
    """

    max_error: float = 4.0
    min_num_inliers: int = 15
    min_model_size: int = 3
    refine_intrinsics: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        ranges.above(self, 0, "max_error")
        ranges.at_least(self, 1, "min_num_inliers")
        ranges.at_least(self, 2, "min_model_size")
        ranges.at_least(self, -1, "seed")


def verify_matches(database: str | Path, pairs: Sequence[tuple[str, str]], work_dir: str | Path,
                   conf: SfMConf) -> None:
    """Estimate the two-view geometry of every pair of ``pairs`` from the raw matches in ``database``."""
    pairs_path = write_pairs(Path(work_dir) / "colmap_pairs.txt", pairs)
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.max_error = conf.max_error
    options.min_num_inliers = conf.min_num_inliers
    if conf.seed >= 0:
        options.ransac.random_seed = conf.seed
    pycolmap.verify_matches(Path(database), pairs_path, options=options)


def reconstruct(database: str | Path, pairs: Sequence[tuple[str, str]], image_dir: str | Path, out: str | Path,
                conf: SfMConf | None = None, verbose: bool = False,
                known_intrinsics: bool = False) -> pycolmap.Reconstruction:
    """Verify the matches and run incremental mapping; write the largest model to ``out``.

    Args:
        database: COLMAP database with cameras, images, keypoints and raw matches.
        pairs: the matched image pairs (names).
        image_dir: image root (colours).
        out: folder of the written model (COLMAP binary format).
        conf: settings.
        verbose: let COLMAP log at INFO level.
        known_intrinsics: the database cameras are calibrated (kept fixed unless ``conf.refine_intrinsics``).

    Raises:
        SfMError: when no model could be built (too few matches or too little parallax).
    """
    conf = conf or SfMConf()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = conf.min_model_size
    refine = not known_intrinsics if conf.refine_intrinsics is None else conf.refine_intrinsics
    options.ba_refine_focal_length = options.ba_refine_extra_params = refine
    options.mapper.abs_pose_refine_focal_length = options.mapper.abs_pose_refine_extra_params = refine
    if conf.seed >= 0:
        options.random_seed = conf.seed
    with quiet_colmap(verbose):
        verify_matches(database, pairs, out.parent, conf)
        models = pycolmap.incremental_mapping(Path(database), Path(image_dir), out / "models", options=options)
    if not models:
        raise SfMError(f"{database}: incremental mapping registered no model (too few verified matches?)")
    best = max(models.values(), key=lambda r: r.num_reg_images())
    best.write(out)
    shutil.rmtree(out / "models", ignore_errors=True)
    logger.info("SfM: %d models, the largest registers %d images and %d points", len(models),
                best.num_reg_images(), best.num_points3D())
    return best
