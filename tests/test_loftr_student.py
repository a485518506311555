"""The shipped Coarse LoFTR student on held-out data: accuracy floors (graf, the world's test split), live demo.

The student (``weights/loftr_coarse_s.pt``, ``docs/loftr_coarse.md``) was trained on the world's train split
only; graf and the test split's places were never seen. The floors sit below the measured values
(``benchmarks/loftr_eval.py``) with a margin, so that a broken network, match rule or pixel convention fails.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from visloc.data.world.pairs import PairsConf, generate_pairs
from visloc.geometry.estimators import Estimator, EstimatorConf
from visloc.geometry.metrics import homography_corner_error
from visloc.io.images import read_image
from visloc.matching import MATCHERS
from visloc.matching.api import match_images
from visloc.matching.image.coarse_loftr import SHIPPED, resolve_coarse_loftr
from visloc.models.coarse_loftr import CoarseMatchConf
from visloc.train.loftr.data import WorldPairs, WorldPairsConf
from visloc.train.loftr.validation import evaluate
from visloc.weights.records import WEIGHTS, check_shipped, shipped_path

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
#: floors, below the values measured with the shipped student (in the comments)
GRAF_MATCHES, GRAF_CORNER_PX = 150, 25.0  # 224 matches, 15.6 px (MAGSAC++ at 8 px on cell centres)
WORLD_PRECISION1, WORLD_MATCHES = 0.65, 200  # 0.81 within one cell, 316 matches per pair (9 test pairs)
LIVE_MATCHES = 600  # 875 per frame against the first frame of vtest.avi (a static camera)
CASTLE_POINTS, CASTLE_RECALL_5CM = 800, 0.8  # 1264 points; 6 / 6 queries within 5 cm / 10 deg (median 12 mm)


def test_the_student_is_shipped_and_matches_its_record():
    assert SHIPPED in WEIGHTS and WEIGHTS[SHIPPED].home == "visloc"
    path = check_shipped(SHIPPED, shipped_path(SHIPPED))
    assert path.stat().st_size < 2_000_000
    net = resolve_coarse_loftr(None)
    assert net.conf.resolution == 16 and net.conf.d_model == 32 and not net.training


@pytest.mark.slow
def test_graf_homography_floor(graf_pair):
    img0, img1 = read_image(graf_pair.path0), read_image(graf_pair.path1)
    out = match_images(MATCHERS.build("loftr-coarse"), img0, img1)
    m = out.matches.numpy()
    k0, k1 = out.keypoints0.numpy()[m[:, 0]], out.keypoints1.numpy()[m[:, 1]]
    est = Estimator(EstimatorConf(model="homography", threshold=8.0))(k0.astype(np.float64), k1.astype(np.float64))
    h, w = img0.shape[:2]
    assert out.num_matches > GRAF_MATCHES
    assert homography_corner_error(est.model, graf_pair.H_0to1, w, h) < GRAF_CORNER_PX


@pytest.mark.slow
def test_world_test_split_floor(tmp_path):
    generate_pairs(PairsConf(num_pairs=9), tmp_path / "pairs_test", split="test", progress=False)
    ds = WorldPairs(WorldPairsConf(root=str(tmp_path / "pairs_{split}"), augment=False), "test")
    with torch.inference_mode():
        got = evaluate(resolve_coarse_loftr(None), DataLoader(ds, batch_size=3), CoarseMatchConf(), ransac_px=4.0)
    assert got["num_pairs"] == 9
    assert got["precision@1"] > WORLD_PRECISION1 and got["num_matches"] > WORLD_MATCHES


@pytest.mark.slow
def test_live_demo_default_matcher_on_vtest(tmp_path):
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} missing (apt-get install opencv-doc)")
    from visloc.pipelines.live import DEFAULT_MATCHER, LiveConf, run_live

    assert DEFAULT_MATCHER == "loftr-coarse"
    out = tmp_path / "live.mp4"
    summary = run_live(str(VTEST), LiveConf(out=out, max_frames=8, show=False))
    cap = cv2.VideoCapture(str(out))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert summary.frames == 8 and frames == 8
    assert summary.matches_mean > LIVE_MATCHES


@pytest.mark.slow
def test_castle_map_and_localization_with_the_dense_matcher(tmp_path):
    from visloc.data.castle import CASTLE_ROOT
    from visloc.eval.localization import evaluate_poses
    from visloc.io.poses import read_poses
    from visloc.localization.datasets import CASTLE_THRESHOLDS, castle_split
    from visloc.localization.localize import LocalizerConf
    from visloc.pipelines.localize import localize_queries
    from visloc.pipelines.map_build import build_map

    if not (CASTLE_ROOT / "Images").is_dir():
        pytest.skip(f"{CASTLE_ROOT} missing (apt-get install visp-images-data)")
    split = castle_split(tmp_path / "data", step=3, max_queries=6)
    summary = build_map(split.db_images, tmp_path / "map", poses=split.db_poses, cameras=split.db_cameras,
                        matcher="loftr-coarse", num_pairs=4, progress=False)
    assert summary.num_registered == summary.num_images == 14 and summary.num_points > CASTLE_POINTS
    out = tmp_path / "loc" / "poses.txt"
    localize_queries(tmp_path / "map", split.query_images, out, cameras=split.query_cameras,
                     conf=LocalizerConf(num_retrieved=4), progress=False)
    report = evaluate_poses(split.ground_truth, read_poses(out), CASTLE_THRESHOLDS)
    assert report.recall[2] >= CASTLE_RECALL_5CM, report.recall
