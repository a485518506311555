"""Ground truth of image pairs (data/world/pairs_gt.py) on a constructed two-plane world with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.data.scene import (
    Frame,
    SceneConf,
    World,
    intrinsics,
    make_plane,
    pose_from_heading,
    project,
    render,
)
from visloc.data.scene.flow import flow
from visloc.data.world.pairs_gt import (
    IGNORE,
    UNMATCHED,
    View,
    baseline_m,
    correspondences,
    grid_points,
    gt_matches,
    overlap_ratio,
    pair_overlap,
    rotation_angle_deg,
)

SIZE = (160, 120)
K = intrinsics(100.0, *SIZE)
POSE0 = pose_from_heading((0.0, 0.0, 1.5), 0.0)  # looking east (+x); +y is to the left
POSE1 = pose_from_heading((0.0, 2.0, 1.5), 0.0)  # 2 m to the left


def _texture(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def two_planes() -> tuple[View, View]:
    """Both views of a wall (x = 10 m, z in [0, 5]) and a board in front of it (x = 5 m, y in [-1, 1], z in
    [0.5, 2.5]), with their plane labels; the sky above and below the wall."""
    wall = make_plane("wall", (10.0, -10.0, 5.0), (0, 1, 0), (0, 0, -1), (20.0, 5.0), _texture(0, 400, 100))
    board = make_plane("board", (5.0, -1.0, 2.5), (0, 1, 0), (0, 0, -1), (2.0, 2.0), _texture(1, 80, 80))
    world = World(SceneConf(), (wall, board))
    f0 = render(world, K, POSE0, size=SIZE, near=0.1)
    f1 = render(world, K, POSE1, size=SIZE, near=0.1)
    return View(f0.depth, K, POSE0, f0.plane_index), View(f1.depth, K, POSE1, f1.plane_index)


def _uv(points: list[tuple[float, float, float]], pose) -> np.ndarray:
    return project(np.array(points, np.float64), K, pose)[0]


def test_sub_pixel_points_of_an_oblique_plane_map_exactly_with_labels() -> None:
    plane = make_plane("oblique", (2.0, 3.0, 4.0), (0.8, -0.6, 0.0), (0.0, 0.0, -1.0), (12.0, 4.0),
                       _texture(2, 240, 80))
    world = World(SceneConf(), (plane,))
    views = [View(f.depth, K, p, f.plane_index) for p in (POSE0, POSE1)
             for f in [render(world, K, p, size=SIZE, near=0.1)]]
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(0.0, 159.0, 2000), rng.uniform(0.0, 119.0, 2000)], 1)
    uv1, ok = correspondences(pts, *views)
    n_c, p_c = POSE0.R @ plane.normal, POSE0.transform(plane.origin[None])[0]
    rays = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.linalg.inv(K).T
    world_pts = (rays * ((n_c @ p_c) / (rays @ n_c))[:, None] - POSE0.t) @ POSE0.R  # ray-plane intersections
    expected = project(world_pts, K, POSE1)[0]
    assert ok.sum() > 500
    assert np.abs(uv1[ok] - expected[ok]).max() < 1e-3
    unlabelled = [View(v.depth, v.K, v.pose) for v in views]  # nearest-pixel depth: not exact between pixels
    uv1_nearest, ok_nearest = correspondences(pts, *unlabelled)
    assert np.abs(uv1_nearest[ok & ok_nearest] - expected[ok & ok_nearest]).max() > 1e-2


def test_pixels_mapped_there_and_back_land_within_005_px(two_planes) -> None:
    view0, view1 = two_planes
    uv0 = grid_points(SIZE, 1)
    uv1, ok = correspondences(uv0, view0, view1)
    back, ok_back = correspondences(uv1[ok], view1, view0)  # sub-pixel, exact with labels (edges invalid)
    assert ok_back.sum() > 0.99 * ok.sum() > 5000  # a few land between two planes' pixels in image 1: undefined
    assert np.linalg.norm(back[ok_back] - uv0[ok][ok_back], axis=1).max() < 0.05
    # a wall pixel of image 0 landing on the board's edge pixel in image 1: map_pixels' any-of-four depth test
    # keeps it, the round trip drops it
    edge = np.array([[119.0, 40.0]])
    assert not correspondences(edge, view0, view1)[1][0] and correspondences(edge, view0, view1, cycle_px=None)[1][0]


def test_occlusion_and_image_bounds_decide_covisibility(two_planes) -> None:
    # board point (seen by both), wall point hidden from camera 1 by the board, wall point out of image 1
    uv0 = _uv([(5.0, 0.5, 1.5), (10.0, -2.5, 1.5), (10.0, -7.0, 2.0), (10.0, 4.0, 3.0)], POSE0)
    uv1, ok = correspondences(uv0, *two_planes)
    assert ok.tolist() == [True, False, False, True]
    expected = _uv([(5.0, 0.5, 1.5), (10.0, 4.0, 3.0)], POSE1)
    assert np.abs(uv1[[0, 3]] - expected).max() < 1e-3


def test_gt_matches_on_two_planes_have_the_known_answer(two_planes) -> None:
    A, B, C, E, F, G = (5.0, 0.5, 1.5), (10.0, -2.5, 1.5), (10.0, 4.0, 3.0), (10.0, -7.0, 2.0), (10.0, 3.0, 1.0), \
        (10.0, 5.0, 4.0)
    X = (5.0, 0.9, 2.0)  # a board point seen by both cameras, with no keypoint in image 0 near it
    kp0 = np.concatenate([_uv([A, B, C], POSE0), [[80.0, 5.0]], _uv([E, F, G], POSE0)])  # [80, 5]: sky
    a1, c1, g1, x1 = _uv([A, C, G, X], POSE1)
    kp1 = np.array([a1 + (0.5, -0.3), c1 + (1.0, 1.0), g1 + (4.0, 0.0), x1, (80.0, 5.0)])
    gt = gt_matches(kp0, kp1, *two_planes, pos_th=3.0, neg_th=5.0)
    # A <-> 0 and C <-> 1 match; B occluded, sky, E outside image 1, F nothing near: unmatched; G at 4 px: ignored
    assert gt.matches0.tolist() == [0, UNMATCHED, 1, UNMATCHED, UNMATCHED, UNMATCHED, IGNORE]
    assert gt.matches1.tolist() == [0, 2, IGNORE, UNMATCHED, UNMATCHED]
    assert gt.pairs.tolist() == [[0, 0], [2, 1]]
    assert gt.matches0.dtype == np.int32 and gt.matches1.dtype == np.int32
    assert gt.covisible0.tolist() == [True, False, True, False, False, True, True]


def test_overlap_is_the_covisible_share_and_symmetric_is_the_min(two_planes) -> None:
    view0, view1 = two_planes
    o01 = overlap_ratio(view0, view1, stride=1)
    frames = [Frame(np.zeros(v.depth.shape + (3,), np.uint8), v.depth, v.labels, v.labels, K, v.pose)
              for v in (view0, view1)]
    assert o01 == flow(*frames).valid.mean()  # the share of valid flow
    _, ok = correspondences(grid_points(SIZE, 1), view0, view1)  # with the round trip: a few edge pixels fewer
    assert 0 < o01 - ok.mean() < 0.01
    a, b, sym = pair_overlap(view0, view1, stride=2)
    assert sym == min(a, b) and 0.3 < sym < 0.9
    assert overlap_ratio(view0, view0, stride=1) == pytest.approx(np.isfinite(view0.depth).mean())
    sky_as_zero = View(np.where(np.isinf(view0.depth), 0.0, view0.depth).astype(np.float32), K, POSE0, view0.labels)
    assert overlap_ratio(sky_as_zero, view1, stride=1) == o01  # the files' sky (0) is the renderer's (inf)


def test_viewpoint_change_metrics() -> None:
    p1 = pose_from_heading((3.0, 4.0, 1.5), 25.0)
    assert rotation_angle_deg(POSE0, p1) == pytest.approx(25.0)
    assert baseline_m(POSE0, p1) == pytest.approx(5.0)
    assert grid_points((5, 4), 2).tolist() == [[1, 1], [3, 1], [1, 3], [3, 3]]
