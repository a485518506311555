"""Exact-value tests of visloc.geometry.metrics on hand-constructed geometry."""

import math

import numpy as np
import pytest

from visloc.geometry.metrics import (
    auc_table,
    end_point_error,
    homography_corner_error,
    homography_match_errors,
    match_precision,
    pose_auc,
    pose_error_max,
    relative_pose_error,
    rotation_error_deg,
    summarize,
    translation_error_deg,
)

TOL = 1e-12


def translation_h(tx, ty):
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def reference_pose_auc(errors, thresholds):
    # SuperGlue's pose_auc verbatim (np.trapz renamed np.trapezoid in numpy 2).
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    sort_idx = np.argsort(errors)
    errors = np.array(errors.copy())[sort_idx]
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last_index = np.searchsorted(errors, t)
        r = np.r_[recall[:last_index], recall[last_index - 1]]
        e = np.r_[errors[:last_index], t]
        aucs.append(trapezoid(r, x=e) / t)
    return aucs


# ---------------------------------------------------------------- homography_corner_error


def test_corner_error_identity_is_zero():
    assert homography_corner_error(np.eye(3), np.eye(3), 640, 480) == 0.0


def test_corner_error_translation_3_4_is_5():
    # Every corner moves by (3, 4): distance sqrt(9 + 16) = 5 at each of the 4 corners.
    assert homography_corner_error(translation_h(3, 4), np.eye(3), 640, 480) == 5.0
    # Symmetric in which one is the estimate.
    assert homography_corner_error(np.eye(3), translation_h(3, 4), 640, 480) == 5.0


def test_corner_error_same_non_identity_is_zero():
    H = np.array([[1.1, 0.05, 7.0], [-0.02, 0.9, -3.0], [1e-4, 2e-4, 1.0]])
    assert homography_corner_error(H.copy(), H, 100, 50) == pytest.approx(0.0, abs=TOL)


def test_corner_error_scale_by_2():
    # W=11, H=5: corners (0,0), (10,0), (10,4), (0,4) -> doubled (0,0), (20,0), (20,8), (0,8).
    # Distances 0, 10, sqrt(10^2 + 4^2) = sqrt(116), 4 -> mean (14 + sqrt(116)) / 4 = 6.1925...
    H_est = np.diag([2.0, 2.0, 1.0])
    expected = (14.0 + math.sqrt(116.0)) / 4.0
    assert homography_corner_error(H_est, np.eye(3), 11, 5) == pytest.approx(expected, abs=TOL)


def test_corner_error_projective_normalisation():
    # H with h33 = 0.5 doubles every point: same corners and mean as the diag(2, 2, 1) case.
    H_est = np.diag([1.0, 1.0, 0.5])
    expected = (14.0 + math.sqrt(116.0)) / 4.0
    assert homography_corner_error(H_est, np.eye(3), 11, 5) == pytest.approx(expected, abs=TOL)


def test_corner_error_failures_are_inf():
    assert homography_corner_error(None, np.eye(3), 640, 480) == math.inf
    H_nan = np.eye(3)
    H_nan[0, 2] = np.nan
    assert homography_corner_error(H_nan, np.eye(3), 640, 480) == math.inf
    # Third row (1, 0, 0): corner (0, 0) gets w = 0, sent to infinity.
    H_inf = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert homography_corner_error(H_inf, np.eye(3), 640, 480) == math.inf


def test_corner_error_validation():
    with pytest.raises(ValueError, match="H_gt"):
        homography_corner_error(np.eye(3), np.eye(2), 640, 480)
    with pytest.raises(ValueError, match="H_est"):
        homography_corner_error(np.eye(4), np.eye(3), 640, 480)
    with pytest.raises(ValueError, match="width"):
        homography_corner_error(np.eye(3), np.eye(3), 0, 480)
    with pytest.raises(ValueError, match="H_gt"):
        homography_corner_error(np.eye(3), np.full((3, 3), np.nan), 640, 480)


# ---------------------------------------------------------------- homography_match_errors


def test_match_errors_translation():
    # H_gt shifts by (3, 4): (0,0) -> (3,4), (1,2) -> (4,6).
    kpts0 = np.array([[0.0, 0.0], [1.0, 2.0]])
    kpts1 = np.array([[0.0, 0.0], [4.0, 7.0]])
    # Errors: |(3,4) - (0,0)| = 5, |(4,6) - (4,7)| = 1.
    np.testing.assert_array_equal(homography_match_errors(kpts0, kpts1, translation_h(3, 4)), [5.0, 1.0])


def test_match_errors_projective():
    # h33 = 0.5 doubles: (2, 4) -> (4, 8), matched to (1, 8) -> error 3.
    errs = homography_match_errors(np.array([[2.0, 4.0]]), np.array([[1.0, 8.0]]), np.diag([1.0, 1.0, 0.5]))
    np.testing.assert_allclose(errs, [3.0], atol=TOL)


def test_match_errors_empty_and_validation():
    assert homography_match_errors(np.zeros((0, 2)), np.zeros((0, 2)), np.eye(3)).shape == (0,)
    with pytest.raises(ValueError, match="kpts0"):
        homography_match_errors(np.zeros((3, 3)), np.zeros((3, 2)), np.eye(3))
    with pytest.raises(ValueError, match="kpts1"):
        homography_match_errors(np.zeros((3, 2)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="kpts0 and kpts1"):
        homography_match_errors(np.zeros((3, 2)), np.zeros((2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="H_gt"):
        homography_match_errors(np.zeros((3, 2)), np.zeros((3, 2)), np.eye(3)[:2])


# ---------------------------------------------------------------- match_precision


def test_match_precision_ignores_nan_strict_threshold():
    # Valid: 0.5, 2.9, 3.0, 10 (NaN dropped); strictly below 3: 0.5, 2.9 -> 2 / 4.
    assert match_precision(np.array([0.5, 2.9, 3.0, np.nan, 10.0]), 3.0) == 0.5
    # inf is a wrong match, not a missing one: 1 / 2.
    assert match_precision(np.array([1.0, np.inf])) == 0.5
    # Default threshold 3 px: 2 of 3.
    assert match_precision(np.array([0.0, 1.0, 5.0])) == pytest.approx(2.0 / 3.0, abs=TOL)


def test_match_precision_no_valid_is_nan():
    assert math.isnan(match_precision(np.array([np.nan, np.nan])))
    assert math.isnan(match_precision(np.zeros(0)))


def test_match_precision_validation():
    with pytest.raises(ValueError, match="errors"):
        match_precision(np.zeros((2, 2)))


# ---------------------------------------------------------------- pose_auc / auc_table


def test_pose_auc_hand_computed():
    # errors [0,1,2,3], n=4 -> curve points (0,0) (0,.25) (1,.5) (2,.75) (3,1), closed by (4,1).
    # Trapezoids: 0 + (.25+.5)/2 + (.5+.75)/2 + (.75+1)/2 + (1+1)/2 = .375+.625+.875+1 = 2.875.
    # AUC@4 = 2.875 / 4 = 0.71875.
    # t=2: points with e < 2 then (2, .5): 0 + .375 + (.5+.5)/2 = .875 -> .4375.
    # t=1: (0,0) (0,.25) (1,.25): .25 -> .25.
    aucs = pose_auc([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert aucs == pytest.approx([0.25, 0.4375, 0.71875], abs=TOL)


def test_pose_auc_unsorted_input():
    assert pose_auc([3.0, 0.0, 2.0, 1.0], [4.0]) == pytest.approx([0.71875], abs=TOL)


def test_pose_auc_all_above_threshold_is_zero():
    # Only (0,0) kept, closed by (4, 0): area 0.
    assert pose_auc([5.0, 6.0], [4.0]) == [0.0]


def test_pose_auc_all_zero_is_one():
    # (0,0) (0,1/3) (0,2/3) (0,1) closed by (1,1): area 1 -> 1.0.
    assert pose_auc([0.0, 0.0, 0.0], [1.0]) == pytest.approx([1.0], abs=TOL)


def test_pose_auc_failures_never_recalled():
    # [1, inf] at t=2: (0,0) (1,.5) closed by (2,.5): .25 + .5 = .75 -> .375.
    assert pose_auc([1.0, math.inf], [2.0]) == pytest.approx([0.375], abs=TOL)
    assert pose_auc([math.nan, 1.0], [2.0]) == pytest.approx([0.375], abs=TOL)
    assert pose_auc([math.inf, math.nan], [2.0]) == [0.0]


def test_pose_auc_error_equal_to_threshold_excluded():
    # [1, 2] at t=2, strict <: (0,0) (1,.5) closed by (2,.5) -> .75 / 2 = .375.
    # A non-strict cut would give (0,0) (1,.5) (2,1) (2,1): 1.0 / 2 = .5.
    assert pose_auc([1.0, 2.0], [2.0]) == pytest.approx([0.375], abs=TOL)


def test_pose_auc_matches_superglue_reference():
    rng = np.random.default_rng(0)
    errors = rng.exponential(8.0, size=200)
    errors[::17] = np.inf
    thresholds = [5.0, 10.0, 20.0]
    np.testing.assert_allclose(pose_auc(errors, thresholds), reference_pose_auc(errors, thresholds), atol=TOL)


def test_pose_auc_empty_and_validation():
    assert all(math.isnan(a) for a in pose_auc([], [5.0, 10.0]))
    with pytest.raises(ValueError, match="errors"):
        pose_auc([-1.0, 2.0], [5.0])
    with pytest.raises(ValueError, match="errors"):
        pose_auc([[1.0, 2.0]], [5.0])
    with pytest.raises(ValueError, match="thresholds"):
        pose_auc([1.0], [0.0])
    with pytest.raises(ValueError, match="thresholds"):
        pose_auc([1.0], [math.inf])


def test_auc_table_keys_and_values():
    table = auc_table([0.0, 1.0, 2.0, 3.0], [1, 2, 4])
    assert list(table) == ["auc@1", "auc@2", "auc@4"]
    assert [table[k] for k in table] == pytest.approx([0.25, 0.4375, 0.71875], abs=TOL)


# ---------------------------------------------------------------- rotation / translation errors


def test_rotation_error_known_angles():
    assert rotation_error_deg(rot_z(10.0), np.eye(3)) == pytest.approx(10.0, abs=1e-10)
    assert rotation_error_deg(rot_z(30.0), rot_z(20.0)) == pytest.approx(10.0, abs=1e-10)
    assert rotation_error_deg(np.eye(3), np.eye(3)) == 0.0
    # Rotation by 180 about z: trace -1, cos -1 -> exactly 180.
    assert rotation_error_deg(np.diag([-1.0, -1.0, 1.0]), np.eye(3)) == 180.0


def test_rotation_error_clips_cosine():
    # Trace slightly above 3 would give arccos(>1) = nan without clipping.
    assert rotation_error_deg(np.eye(3) * (1.0 + 1e-12), np.eye(3)) == 0.0


def test_rotation_error_failure_and_validation():
    assert rotation_error_deg(np.full((3, 3), np.nan), np.eye(3)) == math.inf
    with pytest.raises(ValueError, match="R_est"):
        rotation_error_deg(np.eye(3)[:2], np.eye(3))
    with pytest.raises(ValueError, match="R_gt"):
        rotation_error_deg(np.eye(3), np.zeros(3))


def test_translation_error_sign_ambiguity_and_angles():
    assert translation_error_deg(np.array([-1.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])) == 0.0
    assert translation_error_deg(np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])) == 90.0
    assert translation_error_deg(np.array([2.0, 0.0, 0.0]), np.array([5.0, 0.0, 0.0])) == 0.0
    # (1, sqrt3, 0) vs x: 60 deg; (-1, sqrt3, 0) vs x: 120 deg -> min(120, 60) = 60.
    s3 = math.sqrt(3.0)
    assert translation_error_deg(np.array([1.0, s3, 0.0]), np.array([1.0, 0.0, 0.0])) == pytest.approx(
        60.0, abs=1e-10
    )
    assert translation_error_deg(np.array([-1.0, s3, 0.0]), np.array([1.0, 0.0, 0.0])) == pytest.approx(
        60.0, abs=1e-10
    )


def test_translation_error_degenerate_and_validation():
    assert math.isnan(translation_error_deg(np.array([1.0, 0.0, 0.0]), np.zeros(3)))
    assert translation_error_deg(np.zeros(3), np.array([1.0, 0.0, 0.0])) == math.inf
    with pytest.raises(ValueError, match="t_gt"):
        translation_error_deg(np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="t_est"):
        translation_error_deg(np.ones(2), np.ones(3))


def test_relative_pose_error_values_and_failures():
    t_est, t_gt = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    err_R, err_t = relative_pose_error(rot_z(10.0), t_est, np.eye(3), t_gt)
    assert err_R == pytest.approx(10.0, abs=1e-10)
    assert err_t == 90.0
    assert relative_pose_error(None, None, np.eye(3), t_gt) == (math.inf, math.inf)
    assert relative_pose_error(None, t_gt, np.eye(3), t_gt) == (math.inf, math.inf)
    assert relative_pose_error(np.eye(3), None, np.eye(3), t_gt) == (math.inf, math.inf)
    with pytest.raises(ValueError, match="R_gt"):
        relative_pose_error(None, None, np.eye(2), t_gt)


def test_pose_error_max():
    assert pose_error_max(10.0, 90.0) == 90.0
    assert pose_error_max(7.5, 2.0) == 7.5
    assert pose_error_max(math.inf, 3.0) == math.inf
    assert math.isnan(pose_error_max(3.0, math.nan))


# ---------------------------------------------------------------- end_point_error / summarize


def test_end_point_error_values_and_validation():
    pred = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    gt = np.array([[3.0, 4.0], [1.0, 1.0], [-4.0, 7.0]])
    # |(-3,-4)| = 5, 0, |(6,-8)| = 10.
    np.testing.assert_array_equal(end_point_error(pred, gt), [5.0, 0.0, 10.0])
    with pytest.raises(ValueError, match="pred"):
        end_point_error(np.zeros((3, 3)), gt)
    with pytest.raises(ValueError, match="pred and gt"):
        end_point_error(pred[:2], gt)


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, 10.0, math.inf, math.nan], "H_error")
    # Finite: 1, 2, 3, 10 -> mean 4, median 2.5; two non-finite.
    assert s == {"H_error_mean": 4.0, "H_error_median": 2.5, "H_error_num_nonfinite": 2}
    empty = summarize([math.inf], "e")
    assert math.isnan(empty["e_mean"]) and math.isnan(empty["e_median"])
    assert empty["e_num_nonfinite"] == 1
    with pytest.raises(ValueError, match="values"):
        summarize(np.zeros((2, 2)), "e")
