"""The renderer for big worlds: place-id buffer, world-level culling (exact), far plane, any resolution."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from visloc.data.scene import SceneConf, World, build_world, db_poses, intrinsics, make_plane, pose_from_heading, render
from visloc.data.scene.cull import cull, plane_table
from visloc.io.poses import CameraPose

CONF = SceneConf(width=160, height=120, focal=100.0, num_db=3)
K = intrinsics(CONF.focal, CONF.width, CONF.height)
EYE = CameraPose(np.eye(3), np.zeros(3))  # camera frame = world frame: x right, y down, z forward


def _texture(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _front(name: str, x0: float, y0: float, z: float, w: float, h: float, place: int, seed: int = 0):
    """A rectangle facing the camera at depth ``z``, top-left corner at (x0, y0), ``place_id`` = place."""
    plane = make_plane(name, (x0, y0, z), (1, 0, 0), (0, 1, 0), (w, h), _texture(seed, 64, 48))
    return dataclasses.replace(plane, place_id=place)


def _pixel_box(x0: float, y0: float, z: float, w: float, h: float) -> tuple[slice, slice]:
    """Pixel rows and columns strictly inside the image of a fronto-parallel rectangle (1 px margin)."""
    u0, v0 = K[0, 0] * x0 / z + K[0, 2], K[1, 1] * y0 / z + K[1, 2]
    u1, v1 = K[0, 0] * (x0 + w) / z + K[0, 2], K[1, 1] * (y0 + h) / z + K[1, 2]
    return slice(int(np.ceil(v0)) + 1, int(np.floor(v1))), slice(int(np.ceil(u0)) + 1, int(np.floor(u1)))


def test_place_id_buffer_follows_the_visible_plane():
    wall = _front("wall", -4.0, -3.0, 10.0, 6.0, 5.0, place=7)
    board = _front("board", -1.0, -1.0, 5.0, 1.5, 1.0, place=3, seed=1)
    frame = render(World(CONF, (wall, board)), K, EYE)
    assert frame.place_id.dtype == np.int32 and frame.plane_index.dtype == np.int32
    assert frame.place_id.shape == (CONF.height, CONF.width)
    board_px = _pixel_box(-1.0, -1.0, 5.0, 1.5, 1.0)
    wall_px = _pixel_box(-4.0, -3.0, 10.0, 6.0, 5.0)
    assert (frame.place_id[board_px] == 3).all() and (frame.plane_index[board_px] == 1).all()
    np.testing.assert_allclose(frame.depth[board_px], 5.0, rtol=1e-6)
    on_wall = np.zeros_like(frame.place_id, bool)
    on_wall[wall_px] = True
    on_wall[board_px[0].start - 2:board_px[0].stop + 2, board_px[1].start - 2:board_px[1].stop + 2] = False
    assert on_wall.sum() > 1000 and (frame.place_id[on_wall] == 7).all()
    np.testing.assert_allclose(frame.depth[on_wall], 10.0, rtol=1e-6)
    sky = frame.plane_index == -1
    assert sky.sum() > 1000 and (frame.place_id[sky] == -1).all() and np.isinf(frame.depth[sky]).all()
    # everywhere: place_id is the place of the visible plane
    lookup = np.array([7, 3], np.int32)
    np.testing.assert_array_equal(frame.place_id[~sky], lookup[frame.plane_index[~sky]])


def _mixed_world() -> World:
    """Planes in view, behind the camera, beside the frustum, far away, crossing the near plane, sub-pixel."""
    planes = [
        _front("wall", -6.0, -4.0, 12.0, 12.0, 8.0, place=0),
        _front("board", -1.0, -0.5, 4.0, 1.2, 1.5, place=1, seed=1),
        _front("coplanar_next_to_wall", 6.0, -4.0, 12.0, 3.0, 8.0, place=2, seed=2),  # shares the wall's edge
        _front("behind", -2.0, -2.0, -5.0, 4.0, 4.0, place=3, seed=3),
        _front("beside", 40.0, -2.0, 10.0, 4.0, 4.0, place=4, seed=4),
        _front("far", -20.0, -20.0, 300.0, 40.0, 40.0, place=5, seed=5),
        _front("tiny", 0.3, 0.3, 30.0, 0.01, 0.01, place=6, seed=6),
        dataclasses.replace(make_plane("floor", (-20.0, 1.5, -5.0), (1, 0, 0), (0, 0, 1), (40.0, 60.0),
                                       _texture(7, 128, 192)), place_id=7),  # under the camera, crosses near
    ]
    return World(CONF, tuple(planes))


@pytest.mark.parametrize("far", [None, 100.0])
def test_culling_changes_no_pixel(far):
    world = _mixed_world()
    a = np.deg2rad(12.0)
    turned = CameraPose(np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]]), [0.3, 0.1, 0.5])
    for pose in (EYE, turned):
        a = render(world, K, pose, far=far)
        b = render(world, K, pose, far=far, culling=False)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.plane_index, b.plane_index)
        np.testing.assert_array_equal(a.place_id, b.place_id)
    kept = set(cull(plane_table(world), K, EYE, (CONF.width, CONF.height), CONF.near_m, 100.0).index.tolist())
    names = {world.planes[i].name for i in kept}
    assert {"wall", "board", "floor"} <= names
    assert not names & {"behind", "beside", "far", "tiny"}


def test_culling_changes_no_pixel_of_the_street():
    conf = SceneConf(width=200, height=150, focal=160.0, num_db=12)
    world = build_world(conf)
    Ks = intrinsics(conf.focal, conf.width, conf.height)
    for pose in db_poses(conf)[::4]:
        a, b = render(world, Ks, pose), render(world, Ks, pose, culling=False)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.plane_index, b.plane_index)


def test_far_plane_removes_what_lies_beyond():
    world = World(CONF, (_front("far", -100.0, -100.0, 50.0, 200.0, 200.0, place=0),))
    assert (render(world, K, EYE).plane_index == 0).all()
    assert (render(world, K, EYE, far=60.0).plane_index == 0).all()
    beyond = render(world, K, EYE, far=40.0)
    assert (beyond.plane_index == -1).all() and np.isinf(beyond.depth).all() and (beyond.place_id == -1).all()
    # a plane across the far distance: its pixels beyond it are sky, the others kept
    ground = make_plane("ground", (-50.0, 1.0, 0.5), (1, 0, 0), (0, 0, 1), (100.0, 200.0), _texture(1, 200, 400))
    frame = render(World(CONF, (ground,)), K, EYE, far=20.0)
    seen = frame.plane_index == 0
    assert seen.sum() > 1000 and (frame.depth[seen] <= 20.0).all()
    rows = np.arange(CONF.height)
    far_rows = (rows > K[1, 2]) & (1.0 * K[1, 1] / np.maximum(rows - K[1, 2], 1e-9) > 20.5)  # z = h f / (v - cy)
    assert (frame.plane_index[far_rows] == -1).all()


def test_far_defaults_to_the_conf_far_m():
    plane = _front("far", -100.0, -100.0, 50.0, 200.0, 200.0, place=0)
    conf = types.SimpleNamespace(width=80, height=60, near_m=0.05, far_m=40.0)
    world = types.SimpleNamespace(conf=conf, planes=(plane,))  # duck-typed world, like a City
    Kc = intrinsics(50.0, 80, 60)
    assert (render(world, Kc, EYE).plane_index == -1).all()
    assert (render(world, Kc, EYE, far=100.0).plane_index == 0).all()
    with pytest.raises(ValueError, match="far must be > near"):
        render(world, Kc, EYE, far=0.01)


@pytest.mark.parametrize("size", [(346, 260), (640, 480), (1024, 768), (33, 17)])
def test_any_resolution_keeps_exact_depth(size):
    W, H = size
    Ks = intrinsics(0.8 * W, W, H)
    plane = make_plane("wall", (2.0, 3.0, 2.5), (0.8, -0.6, 0.0), (0.0, 0.0, -1.0), (8.0, 4.0), _texture(0, 80, 40))
    pose = pose_from_heading((0.0, 0.0, 1.2), yaw_deg=25.0, pitch_deg=-5.0)
    frame = render(World(CONF, (plane,)), Ks, pose, size=size)
    assert frame.image.shape == (H, W, 3) and frame.depth.shape == (H, W) and frame.place_id.shape == (H, W)
    assert frame.size == size
    ys, xs = np.nonzero(frame.plane_index == 0)
    assert len(xs) > 0.2 * W * H
    rays = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64) @ np.linalg.inv(Ks).T
    n_c, p_c = pose.R @ plane.normal, pose.transform(plane.origin[None])[0]
    np.testing.assert_allclose(frame.depth[ys, xs], (n_c @ p_c) / (rays @ n_c), rtol=2e-5)


def test_boxes_of_a_few_pixels_render_the_same_with_and_without_culling():
    """Boxes of one to four pixels take their own path (cv2 reads a 1x1 array as a scalar)."""
    corner = _front("corner", 7.91, -6.41, 10.0, 0.5, 0.5, place=0)  # pixels u 158.6..163.6, v -4.6..0.4
    thin = _front("thin", 3.0, -2.0, 10.0, 0.04, 0.3, place=1, seed=1)  # u 109.5..109.9: one pixel column
    world = World(CONF, (corner, thin))
    a, b = render(world, K, EYE), render(world, K, EYE, culling=False)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.plane_index, b.plane_index)
    assert a.plane_index[0, 159] == 0 and (a.plane_index == 0).sum() == 1
    assert (a.plane_index == 1).sum() == 0  # its box holds pixel centres, the texture none
