"""Accuracy floors of the default pipeline (ALIKED-n16 + LightGlue) and SIFT on real ground truth.

Floors are the values measured on this project's reference machine (README results table) with a
margin for run-to-run variation of RANSAC; a regression below them fails.
"""

from pathlib import Path

import pytest

from visloc.eval.predictions import Method
from visloc.pipelines.evaluate import evaluate_homography, evaluate_pose, evaluate_stereo

GRAF = Path("/usr/share/doc/opencv-doc/examples/data/graf1.png")
CASTLE = Path("/usr/share/visp-images-data/ViSP-images/mbt-depth/Castle-simu")
DEFAULT = Method("aliked-n16", "lightglue")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_synthetic_homography_default(cache):
    s = evaluate_homography(DEFAULT, dataset="synthetic", cache_dir=cache, progress=False).summary
    assert s["num_pairs"] == 16
    assert s["auc@3.0"] > 0.65 and s["auc@5.0"] > 0.78  # measured 0.70 / 0.83
    assert s["mean_precision@3px"] > 0.93  # measured 0.958


@pytest.mark.skipif(not GRAF.exists(), reason="needs Debian package opencv-doc")
@pytest.mark.parametrize(("method", "max_error", "min_inliers"), [
    (DEFAULT, 3.3, 350),  # measured 2.86 px, 456 inliers
    (Method("sift", "nn-ratio"), 3.6, 250),  # measured 3.10 px, 357 inliers
])
def test_graf_homography(cache, method, max_error, min_inliers):
    s = evaluate_homography(method, dataset="graf", cache_dir=cache, progress=False).summary
    assert s["median_corner_error"] < max_error
    assert s["mean_num_inliers"] > min_inliers


@pytest.mark.skipif(not CASTLE.exists(), reason="needs Debian package visp-images-data")
def test_castle_pose_default(cache):
    s = evaluate_pose(DEFAULT, step=5, cache_dir=cache, progress=False).summary
    assert s["num_pairs"] == 35
    # measured 0.709 / 0.840 / 0.906 (the reference: 0.56 / 0.75 / 0.87)
    assert s["auc@5.0"] > 0.65 and s["auc@10.0"] > 0.80 and s["auc@20.0"] > 0.87
    assert s["mean_precision@3px"] > 0.72  # measured 0.774, by depth reprojection


def test_motorcycle_stereo_default(cache):
    s = evaluate_stereo(DEFAULT, cache_dir=cache, progress=False).summary
    assert s["mean_epe_median"] < 0.7  # measured 0.42 px
    assert s["mean_precision@3px"] > 0.82  # measured 0.869
    assert s["mean_num_matches"] > 500  # measured 736
