"""Exact flow and pixel mapping between two rendered views: plane homographies, occlusion, image bounds, sky."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.data.scene import SceneConf, World, intrinsics, make_plane, pose_from_heading, render
from visloc.data.scene.flow import flow, map_pixels
from visloc.io.poses import CameraPose

CONF = SceneConf(width=160, height=120, focal=110.0, num_db=3)
K = intrinsics(CONF.focal, CONF.width, CONF.height)


def _texture(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _wall():
    """An oblique wall (world frame: z up), seen from near the origin looking along +x."""
    return make_plane("wall", (8.0, 6.0, 5.0), (0.3, -1.0, 0.0), (0.0, 0.0, -1.0), (16.0, 7.0), _texture(0, 160, 70))


def _homography(plane, pose0: CameraPose, pose1: CameraPose) -> np.ndarray:
    """Plane-induced homography ``K (R + t n^T / d) K^-1`` from image 0 to image 1."""
    R = pose1.R @ pose0.R.T
    t = pose1.t - R @ pose0.t
    n = pose0.R @ plane.normal  # the plane in camera 0: n . X = d
    d = float(n @ pose0.transform(plane.origin[None])[0])
    return K @ (R + np.outer(t, n) / d) @ np.linalg.inv(K)


def _apply(Hm: np.ndarray, uv: np.ndarray) -> np.ndarray:
    p = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ Hm.T
    return p[:, :2] / p[:, 2:]


POSE0 = pose_from_heading((0.0, 0.0, 1.5), yaw_deg=8.0, pitch_deg=3.0)
POSE1 = pose_from_heading((0.8, -0.6, 1.7), yaw_deg=-4.0, pitch_deg=-2.0)


def test_flow_on_a_plane_is_the_plane_homography():
    wall = _wall()
    world = World(CONF, (wall,))
    f0, f1 = render(world, K, POSE0), render(world, K, POSE1)
    field = flow(f0, f1)
    assert field.flow.dtype == np.float32 and field.flow.shape == (CONF.height, CONF.width, 2)
    ys, xs = np.nonzero(field.valid)
    assert len(xs) > 0.4 * CONF.width * CONF.height
    uv0 = np.stack([xs, ys], 1).astype(np.float64)
    expected = _apply(_homography(wall, POSE0, POSE1), uv0) - uv0
    assert np.abs(field.flow[ys, xs] - expected).max() < 0.05
    assert (f0.plane_index[field.valid] == 0).all() and not field.occluded.any()


def test_sky_and_pixels_leaving_the_image_are_invalid():
    wall = _wall()
    world = World(CONF, (wall,))
    pose1 = pose_from_heading((0.0, 0.0, 1.5), yaw_deg=25.0, pitch_deg=3.0)  # turned left: the right side leaves
    f0, f1 = render(world, K, POSE0), render(world, K, pose1)
    field = flow(f0, f1)
    sky = f0.plane_index == -1
    assert sky.sum() > 500 and not field.valid[sky].any() and (field.flow[sky] == 0).all()
    ys, xs = np.nonzero(~sky)
    uv0 = np.stack([xs, ys], 1).astype(np.float64)
    uv1 = _apply(_homography(wall, POSE0, pose1), uv0)
    W, H = CONF.width, CONF.height
    outside = (uv1[:, 0] < -0.01) | (uv1[:, 0] > W - 0.99) | (uv1[:, 1] < -0.01) | (uv1[:, 1] > H - 0.99)
    inside = (uv1[:, 0] > 0.01) & (uv1[:, 0] < W - 1.01) & (uv1[:, 1] > 0.01) & (uv1[:, 1] < H - 1.01)
    assert outside.sum() > 1000 and inside.sum() > 1000
    assert not field.valid[ys[outside], xs[outside]].any() and not field.occluded[ys[outside], xs[outside]].any()
    assert field.valid[ys[inside], xs[inside]].all()
    # the flow of pixels that leave the image is still their projection
    np.testing.assert_allclose(field.flow[ys[outside], xs[outside]], uv1[outside] - uv0[outside], atol=0.05)


def test_occluded_pixels_are_flagged():
    """A board in front of a wall: the wall pixels it hides in view 1 (but not in view 0) are occluded."""
    wall = make_plane("wall", (10.0, 8.0, 6.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (16.0, 6.0), _texture(0, 160, 60))
    board = make_plane("board", (5.0, 0.6, 2.2), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.2, 1.4), _texture(1, 24, 28))
    world = World(CONF, (wall, board))
    pose0 = pose_from_heading((0.0, 0.0, 1.5), yaw_deg=0.0)
    pose1 = pose_from_heading((0.0, -1.5, 1.5), yaw_deg=0.0)  # 1.5 m to the right: the board moves left
    f0, f1 = render(world, K, pose0), render(world, K, pose1)
    field = flow(f0, f1)
    on_wall = f0.plane_index == 0
    ys, xs = np.nonzero(on_wall)
    uv0 = np.stack([xs, ys], 1).astype(np.float64)
    # analytic: the ray from camera 1 to the wall point passes through the board rectangle (x = 5)
    points = pose0.R.T @ (np.concatenate([uv0, np.ones((len(uv0), 1))], 1) @ np.linalg.inv(K).T
                          * f0.depth[ys, xs, None].astype(np.float64) - pose0.t).T
    points = points.T
    c1 = pose1.center
    s = (5.0 - c1[0]) / (points[:, 0] - c1[0])
    hit = c1 + s[:, None] * (points - c1)
    # 10 cm (two pixels) inside or outside the board's edges
    behind = (hit[:, 1] <= 0.5) & (hit[:, 1] >= -0.5) & (hit[:, 2] <= 2.1) & (hit[:, 2] >= 0.9)
    clear = (hit[:, 1] > 0.7) | (hit[:, 1] < -0.7) | (hit[:, 2] > 2.3) | (hit[:, 2] < 0.7)
    assert behind.sum() > 100
    assert field.occluded[ys[behind], xs[behind]].all() and not field.valid[ys[behind], xs[behind]].any()
    assert not field.occluded[ys[clear], xs[clear]].any()
    # the board itself stays visible: its flow is the board's homography
    yb, xb = np.nonzero(field.valid & (f0.plane_index == 1))
    assert len(xb) > 100
    uvb = np.stack([xb, yb], 1).astype(np.float64)
    assert np.abs(field.flow[yb, xb] - (_apply(_homography(board, pose0, pose1), uvb) - uvb)).max() < 0.05


def test_map_pixels_round_trip():
    ground = make_plane("ground", (-10.0, 30.0, 0.0), (1, 0, 0), (0, -1, 0), (80.0, 60.0), _texture(2, 320, 240))
    world = World(CONF, (_wall(), ground))
    f0, f1 = render(world, K, POSE0), render(world, K, POSE1)
    rng = np.random.default_rng(0)
    uv0 = rng.uniform([0, 0], [CONF.width - 1, CONF.height - 1], (4000, 2))  # sub-pixel positions
    uv1, ok01 = map_pixels(uv0, f0.depth, K, POSE0, K, POSE1, f1.depth, labels0=f0.plane_index)
    assert uv1.dtype == np.float64 and uv1.shape == (4000, 2) and ok01.sum() > 1500
    back, ok10 = map_pixels(uv1, f1.depth, K, POSE1, K, POSE0, f0.depth, labels0=f1.plane_index)
    both = ok01 & ok10
    assert both.sum() > 0.9 * ok01.sum()
    assert np.abs(back[both] - uv0[both]).max() < 0.05
    # without labels: nearest-pixel depth, exact for pixel centres
    centres = np.round(uv0)
    _, ok = map_pixels(centres, f0.depth, K, POSE0, K, POSE1, f1.depth)
    c1, _ = map_pixels(centres, f0.depth, K, POSE0, K, POSE1, f1.depth, labels0=f0.plane_index)
    c1_nearest, _ = map_pixels(centres, f0.depth, K, POSE0, K, POSE1)
    np.testing.assert_array_equal(c1[ok], c1_nearest[ok])


def test_map_pixels_without_depth1_checks_only_bounds_and_sky():
    f0 = render(World(CONF, (_wall(),)), K, POSE0)
    uv0 = np.array([[80.0, 60.0], [2.0, 2.0], [-3.0, 5.0]])  # wall, sky (top-left), outside image 0
    uv1, ok = map_pixels(uv0, f0.depth, K, POSE0, K, POSE1, size1=(CONF.width, CONF.height))
    assert f0.plane_index[60, 80] == 0 and f0.plane_index[2, 2] == -1
    assert ok.tolist() == [True, False, False] and np.isfinite(uv1[0]).all() and np.isnan(uv1[1:]).all()
    uv1_free, ok_free = map_pixels(uv0[:1], f0.depth, K, POSE0, K, pose_from_heading((0, 0, 1.5), 190.0))
    assert not ok_free[0] and np.isnan(uv1_free[0]).all()  # behind camera 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"uv0": np.zeros((3, 3))}, "uv0 must be"),
    ({"depth0": np.zeros(5)}, "depth0 must be"),
    ({"K1": np.eye(2)}, "K1 must be"),
    ({"rel_tol": 0.0}, "rel_tol must be"),
    ({"labels0": np.zeros((2, 2), np.int32)}, "labels0 must be"),
])
def test_map_pixels_bad_input_names_the_argument(kwargs, match):
    args = {"uv0": np.zeros((3, 2)), "depth0": np.ones((4, 5)), "K0": K, "pose0": POSE0, "K1": K, "pose1": POSE1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        map_pixels(**args)
