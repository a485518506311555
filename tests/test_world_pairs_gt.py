"""Ground truth of image pairs (data/world/pairs_gt.py) on a constructed two-plane world with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.data.scene import SceneConf, World, intrinsics, make_plane, pose_from_heading, project, render
from visloc.data.world.pairs_gt import (
    IGNORE,
    UNMATCHED,
    baseline_m,
    correspondences,
    grid_points,
    gt_matches,
    overlap_ratio,
    pair_overlap,
    rotation_angle_deg,
    sample_depth,
)

SIZE = (160, 120)
K = intrinsics(100.0, *SIZE)
POSE0 = pose_from_heading((0.0, 0.0, 1.5), 0.0)  # looking east (+x); +y is to the left
POSE1 = pose_from_heading((0.0, 2.0, 1.5), 0.0)  # 2 m to the left


def _texture(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def two_planes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Depth and plane-index maps of both views of a wall (x = 10 m, z in [0, 5]) and a board in front of it
    (x = 5 m, y in [-1, 1], z in [0.5, 2.5]); the sky above the wall."""
    wall = make_plane("wall", (10.0, -10.0, 5.0), (0, 1, 0), (0, 0, -1), (20.0, 5.0), _texture(0, 400, 100))
    board = make_plane("board", (5.0, -1.0, 2.5), (0, 1, 0), (0, 0, -1), (2.0, 2.0), _texture(1, 80, 80))
    world = World(SceneConf(), (wall, board))
    f0 = render(world, K, POSE0, size=SIZE, near=0.1)
    f1 = render(world, K, POSE1, size=SIZE, near=0.1)
    return f0.depth, f1.depth, f0.plane_index, f1.plane_index


def _uv(points: list[tuple[float, float, float]], pose) -> np.ndarray:
    return project(np.array(points, np.float64), K, pose)[0]


def test_sample_depth_is_exact_inside_a_plane_and_sky_is_invalid(two_planes) -> None:
    depth0 = two_planes[0]
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(5.0, 150.0, 200), rng.uniform(30.0, 72.0, 200)], 1)  # on the wall or board
    z, ok = sample_depth(depth0, pts)
    rays = np.concatenate([pts, np.ones((200, 1))], 1) @ np.linalg.inv(K).T
    board = np.maximum(np.abs(rays[:, 0] * 5.0), np.abs(rays[:, 1] * 5.0))  # < 1: on the board (y, z +- 1 m)
    assert ok.all()
    # fronto-parallel planes, 2 px (0.1 m) away from the board's edges: z = 10 on the wall, 5 on the board
    assert np.allclose(z[board > 1.1], 10.0, rtol=1e-6) and np.allclose(z[board < 0.9], 5.0, rtol=1e-6)
    assert (board < 0.9).sum() > 10 and (board > 1.1).sum() > 100
    z_sky, ok_sky = sample_depth(np.where(np.isinf(depth0), 0.0, depth0), np.array([[80.0, 5.0], [3.2, 2.7]]))
    assert not ok_sky.any() and np.isnan(z_sky).all()  # 0 (the files' sky) and inf are both "no surface"


def test_sample_depth_is_exact_between_pixels_of_an_oblique_plane() -> None:
    u, v = np.array([0.8, -0.6, 0.0]), np.array([0.0, 0.0, -1.0])
    plane = make_plane("oblique", (2.0, 3.0, 4.0), u, v, (12.0, 4.0), _texture(2, 240, 80))
    depth = render(World(SceneConf(), (plane,)), K, POSE0, size=SIZE, near=0.1).depth
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(0.0, 159.0, 2000), rng.uniform(0.0, 119.0, 2000)], 1)
    z, ok = sample_depth(depth, pts)
    n_c, p_c = POSE0.R @ plane.normal, POSE0.transform(plane.origin[None])[0]
    rays = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.linalg.inv(K).T
    z_true = (n_c @ p_c) / (rays @ n_c)
    H, W = depth.shape
    cells = [depth[np.clip(np.floor(pts[:, 1]).astype(int) + dy, 0, H - 1),
                   np.clip(np.floor(pts[:, 0]).astype(int) + dx, 0, W - 1)] for dy in (0, 1) for dx in (0, 1)]
    inner = np.isfinite(np.stack(cells, 1)).all(1)  # the 2 x 2 cell on the plane
    assert inner.sum() > 500 and ok[inner].all()
    assert np.abs(z[inner] / z_true[inner] - 1).max() < 1e-5


def test_pixels_mapped_there_and_back_land_within_005_px(two_planes) -> None:
    depth0, depth1, ids0, ids1 = two_planes
    uv0 = grid_points(SIZE, 1)
    uv1, ok = correspondences(uv0, depth0, K, POSE0, depth1, K, POSE1)
    back, ok_back = correspondences(uv1[ok], depth1, K, POSE1, depth0, K, POSE0)
    # away from plane edges in both images (3 x 3 neighbourhoods on one plane), the round trip is exact
    def interior(ids: np.ndarray, uv: np.ndarray) -> np.ndarray:
        H, W = ids.shape
        u = np.clip(np.rint(uv[:, 0]).astype(int), 1, W - 2)
        v = np.clip(np.rint(uv[:, 1]).astype(int), 1, H - 2)
        win = np.stack([ids[v + dv, u + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)], 1)
        return (win == win[:, :1]).all(1)

    keep = ok_back & interior(ids0, uv0[ok]) & interior(ids1, uv1[ok])
    assert keep.sum() > 5000
    err = np.linalg.norm(back[keep] - uv0[ok][keep], axis=1)
    assert err.max() < 0.05


def test_occlusion_and_image_bounds_decide_covisibility(two_planes) -> None:
    depth0, depth1 = two_planes[:2]
    # board point (seen by both), wall point hidden from camera 1 by the board, wall point out of image 1
    uv0 = _uv([(5.0, 0.5, 1.5), (10.0, -2.5, 1.5), (10.0, -7.0, 2.0), (10.0, 4.0, 3.0)], POSE0)
    uv1, ok = correspondences(uv0, depth0, K, POSE0, depth1, K, POSE1)
    assert ok.tolist() == [True, False, False, True]
    expected = _uv([(5.0, 0.5, 1.5), (10.0, 4.0, 3.0)], POSE1)
    assert np.abs(uv1[[0, 3]] - expected).max() < 1e-3


def test_gt_matches_on_two_planes_have_the_known_answer(two_planes) -> None:
    depth0, depth1 = two_planes[:2]
    A, B, C, E, F, G = (5.0, 0.5, 1.5), (10.0, -2.5, 1.5), (10.0, 4.0, 3.0), (10.0, -7.0, 2.0), (10.0, 3.0, 1.0), \
        (10.0, 5.0, 4.0)
    X = (5.0, 0.9, 2.0)  # a board point seen by both cameras, with no keypoint in image 0 near it
    kp0 = np.concatenate([_uv([A, B, C], POSE0), [[80.0, 5.0]], _uv([E, F, G], POSE0)])  # [80, 5]: sky
    a1, c1, g1, x1 = _uv([A, C, G, X], POSE1)
    kp1 = np.array([a1 + (0.5, -0.3), c1 + (1.0, 1.0), g1 + (4.0, 0.0), x1, (80.0, 5.0)])
    gt = gt_matches(kp0, kp1, depth0, K, POSE0, depth1, K, POSE1, pos_th=3.0, neg_th=5.0)
    # A <-> 0 and C <-> 1 match; B occluded, sky, E outside image 1, F nothing near: unmatched; G at 4 px: ignored
    assert gt.matches0.tolist() == [0, UNMATCHED, 1, UNMATCHED, UNMATCHED, UNMATCHED, IGNORE]
    assert gt.matches1.tolist() == [0, 2, IGNORE, UNMATCHED, UNMATCHED]
    assert gt.pairs.tolist() == [[0, 0], [2, 1]]
    assert gt.matches0.dtype == np.int32 and gt.matches1.dtype == np.int32
    assert gt.covisible0.tolist() == [True, False, True, False, False, True, True]


def test_overlap_is_the_covisible_share_and_symmetric_is_the_min(two_planes) -> None:
    depth0, depth1 = two_planes[:2]
    o01 = overlap_ratio(depth0, K, POSE0, depth1, K, POSE1, stride=1)
    _, ok = correspondences(grid_points(SIZE, 1), depth0, K, POSE0, depth1, K, POSE1)
    assert o01 == pytest.approx(ok.mean())
    a, b, sym = pair_overlap(depth0, K, POSE0, depth1, K, POSE1, stride=2)
    assert sym == min(a, b) and 0.3 < sym < 0.9
    assert overlap_ratio(depth0, K, POSE0, depth0, K, POSE0, stride=1) == pytest.approx(np.isfinite(depth0).mean())


def test_viewpoint_change_metrics() -> None:
    p1 = pose_from_heading((3.0, 4.0, 1.5), 25.0)
    assert rotation_angle_deg(POSE0, p1) == pytest.approx(25.0)
    assert baseline_m(POSE0, p1) == pytest.approx(5.0)
    assert grid_points((5, 4), 2).tolist() == [[1, 1], [3, 1], [1, 3], [3, 3]]
