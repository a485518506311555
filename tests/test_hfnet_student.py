"""The shipped default HF-Net student: present, small, safe to load, and accurate on real ground truth."""

from pathlib import Path

import pytest
import torch

from visloc.eval.predictions import Method
from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.pipelines.evaluate import evaluate_homography, evaluate_pose
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF, DEFAULT_WEIGHTS, WORLD_KEY, WORLD_WEIGHTS, load_hfnet
from visloc.weights.records import WEIGHTS, check_shipped

CASTLE = Path("/usr/share/visp-images-data/ViSP-images/mbt-depth/Castle-simu")


def test_default_student_is_shipped_small_and_loads_safely():
    assert DEFAULT_WEIGHTS.is_file(), f"{DEFAULT_WEIGHTS} missing"
    assert DEFAULT_WEIGHTS.stat().st_size <= 15 * 2**20  # the budget
    raw = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(raw) >= {"conf", "state_dict"}
    model = load_hfnet(DEFAULT_WEIGHTS)
    assert model.conf == DEFAULT_STUDENT_CONF


def test_world_student_is_shipped_small_checked_and_loads_safely(astronaut_320):
    """The student distilled on the world's train split only (docs/hfnet_world_student.md)."""
    assert WORLD_WEIGHTS.is_file() and WORLD_WEIGHTS.stat().st_size <= 6 * 2**20
    assert check_shipped(WORLD_KEY, WORLD_WEIGHTS) == WORLD_WEIGHTS  # the record's sha256
    assert WEIGHTS[WORLD_KEY].preprocessing == WEIGHTS["hfnet-default"].preprocessing
    assert load_hfnet(WORLD_WEIGHTS).conf == DEFAULT_STUDENT_CONF
    out = extract_image(EXTRACTORS.build("hfnet", [f"weights={WORLD_WEIGHTS}"]), astronaut_320)
    assert 100 < out.num_keypoints < 2048 and out.global_descriptor.shape == (4096,)


def test_default_extractor_uses_the_student(astronaut_320):
    extractor = EXTRACTORS.build("hfnet")  # no weights, no allow_random: the shipped student
    out = extract_image(extractor, astronaut_320)
    # a trained detector is selective: far fewer than the 2048 maxima a random heatmap fills
    assert 100 < out.num_keypoints < 2048
    assert out.descriptor_dim == 128 and out.global_descriptor.shape == (4096,)
    assert EXTRACTORS.capabilities("hfnet").weights == (str(DEFAULT_WEIGHTS),)


@pytest.mark.slow
@pytest.mark.skipif(not CASTLE.is_dir(), reason="visp-images-data is not installed")
def test_student_pose_accuracy_on_castle(tmp_path):
    s = evaluate_pose(Method("hfnet", "nn-ratio", (), ("ratio_threshold=0.9",)), step=5, cache_dir=tmp_path,
                      progress=False).summary
    # benchmarks/hfnet_student.py; SIFT + ratio reaches 0.19 / 0.65 here
    assert s["auc@5.0"] > AUC5_FLOOR and s["auc@20.0"] > AUC20_FLOOR


def test_student_homography_on_synthetic_pairs(tmp_path):
    s = evaluate_homography(Method("hfnet", "nn-mutual"), dataset="synthetic", cache_dir=tmp_path,
                            progress=False).summary
    assert s["auc@5.0"] > SYNTH_AUC5_FLOOR


# measured with the shipped student (README): Castle nn-ratio 0.571 / 0.811, synthetic nn-mutual 0.650
AUC5_FLOOR, AUC20_FLOOR, SYNTH_AUC5_FLOOR = 0.45, 0.70, 0.55
