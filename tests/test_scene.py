"""The built-in rendered street scene: exact geometry, texture lookup, reproducibility, conditions, files."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.data.scene import (
    BlurConf,
    NightConf,
    SceneConf,
    World,
    apply_condition,
    blur,
    build_world,
    db_poses,
    generate_scene,
    intrinsics,
    load_scene_conf,
    make_plane,
    night,
    pose_from_heading,
    project,
    query_poses,
    read_conditions,
    render,
    unproject,
)
from visloc.io.images import read_image
from visloc.io.poses import CameraPose, read_cameras, read_poses

SMALL = SceneConf(width=320, height=240, focal=250.0, num_db=12, num_queries=3)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SMALL)


def _random_texture(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ray_plane_depth(K: np.ndarray, pose: CameraPose, plane, uv: np.ndarray) -> np.ndarray:
    """float64 z of the intersection of the pixel rays with the plane (camera frame)."""
    n_c = pose.R @ plane.normal
    p_c = pose.transform(plane.origin[None])[0]
    rays = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(K).T
    return (n_c @ p_c) / (rays @ n_c)


def test_depth_of_oblique_plane_is_analytic():
    conf = SceneConf(width=160, height=120, focal=150.0, num_db=3)
    tex = _random_texture(0, 80, 40)
    plane = make_plane("wall", (2.0, 3.0, 2.5), (0.8, -0.6, 0.0), (0.0, 0.0, -1.0), (8.0, 4.0), tex)
    K = intrinsics(conf.focal, conf.width, conf.height)
    pose = pose_from_heading((0.0, 0.0, 1.2), yaw_deg=25.0, pitch_deg=-5.0)
    frame = render(World(conf, (plane,)), K, pose)
    ys, xs = np.nonzero(frame.plane_index == 0)
    assert len(xs) > 0.3 * conf.width * conf.height
    assert np.isinf(frame.depth[frame.plane_index == -1]).all()
    uv = np.stack([xs, ys], 1).astype(np.float64)
    expected = _ray_plane_depth(K, pose, plane, uv)
    np.testing.assert_allclose(frame.depth[ys, xs], expected, rtol=2e-5)


def test_fronto_parallel_texel_lands_on_its_pixel_exactly():
    """One texel per pixel at an integer offset: the rendered pixels are the texture, and project() agrees."""
    conf = SceneConf(width=160, height=120, focal=100.0, num_db=3)
    K = intrinsics(conf.focal, conf.width, conf.height)
    d, (tw, th), (ox, oy) = 5.0, (64, 48), (30, 20)  # texel (s, t) -> pixel (s + ox, t + oy)
    s = d / conf.focal  # metres per texel
    origin = ((ox - 0.5 - K[0, 2]) * s, (oy - 0.5 - K[1, 2]) * s, d)
    tex = _random_texture(1, tw, th)
    plane = make_plane("front", origin, (1, 0, 0), (0, 1, 0), (tw * s, th * s), tex)
    pose = CameraPose(np.eye(3), np.zeros(3))  # camera frame = world frame
    frame = render(World(conf, (plane,)), K, pose)
    np.testing.assert_array_equal(frame.image[oy:oy + th, ox:ox + tw], tex)
    np.testing.assert_allclose(frame.depth[oy:oy + th, ox:ox + tw], d, rtol=1e-6)
    assert (frame.plane_index[oy:oy + th, ox:ox + tw] == 0).all()
    assert (frame.plane_index[:oy] == -1).all() and (frame.plane_index[:, ox + tw:] == -1).all()
    st = np.array([[0, 0], [tw - 1, th - 1], [17, 5]], np.float64)
    points = np.concatenate([st, np.ones((3, 1))], 1) @ plane.texel_to_world.T
    uv, z = project(points, K, pose)
    np.testing.assert_allclose(uv, st + [ox, oy], atol=1e-9)
    np.testing.assert_allclose(z, d)
    np.testing.assert_allclose(plane.world_to_texel(points), st, atol=1e-9)


def test_facade_point_projects_to_its_texture_colour(world):
    """Points on a real facade, seen obliquely by a database camera, show their texture's colour."""
    K = intrinsics(SMALL.focal, SMALL.width, SMALL.height)
    pose = db_poses(SMALL)[3]
    frame = render(world, K, pose)
    index = int(np.bincount(frame.plane_index[frame.plane_index >= 0].ravel()).argmax())
    plane = world.planes[index]
    ys, xs = np.nonzero(frame.plane_index == index)
    pick = np.random.default_rng(0).choice(len(xs), 300, replace=False)
    uv_pix = np.stack([xs[pick], ys[pick]], 1).astype(np.float64)
    points = unproject(frame.depth, K, pose, uv_pix)
    uv, _ = project(points, K, pose)
    np.testing.assert_allclose(uv, uv_pix, atol=1e-3)  # depth and projection are consistent
    st = plane.world_to_texel(points).astype(np.float32)
    colour = cv2.remap(plane.texture, st[:, 0], st[:, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = np.abs(colour.reshape(-1, 3).astype(int) - frame.image[ys[pick], xs[pick]].astype(int))
    assert np.median(err) <= 3 and np.mean(err) < 12


def test_ground_partly_behind_camera_is_clipped_at_the_near_plane():
    conf = SceneConf(width=160, height=120, focal=100.0, num_db=3)
    ground = make_plane("ground", (-400.0, 400.0, 0.0), (1, 0, 0), (0, -1, 0), (800.0, 800.0),
                        _random_texture(2, 200, 200))
    K = intrinsics(conf.focal, conf.width, conf.height)
    pose = pose_from_heading((0.0, 0.0, 1.5), yaw_deg=20.0)  # level camera: horizon on the middle row
    frame = render(World(conf, (ground,)), K, pose)
    cy = K[1, 2]
    rows = np.arange(conf.height)
    below = rows > cy + 2
    assert (frame.plane_index[below] == 0).all()
    assert (frame.plane_index[rows < cy] == -1).all()
    # level camera over a flat ground: z = height * focal / (y - cy)
    expected = 1.5 * conf.focal / (rows[below] - cy)
    np.testing.assert_allclose(frame.depth[below], np.repeat(expected[:, None], conf.width, 1), rtol=1e-4)


def test_same_seed_same_frame_different_seed_differs(world):
    K = intrinsics(SMALL.focal, SMALL.width, SMALL.height)
    pose = db_poses(SMALL)[4]
    a = render(world, K, pose)
    b = render(build_world(SMALL), K, pose)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.depth, b.depth)
    c = render(build_world(dataclasses.replace(SMALL, seed=1)), K, pose)
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 20
    assert query_poses(SMALL)[1] == query_poses(SMALL)[1]
    np.testing.assert_array_equal(query_poses(SMALL)[0][2].t, query_poses(SMALL)[0][2].t)


def test_depth_reprojection_between_frames_is_photometrically_consistent(world):
    K = intrinsics(SMALL.focal, SMALL.width, SMALL.height)
    pa = db_poses(SMALL)[4]
    pb = pose_from_heading(pa.center + [1.5, 0.4, 0.1], yaw_deg=10.0, pitch_deg=2.0)
    poses = {4: pa, 7: pb}
    fa, fb = render(world, K, pa), render(world, K, pb)
    ys, xs = np.nonzero(np.isfinite(fa.depth))
    pick = np.random.default_rng(1).choice(len(xs), 5000, replace=False)
    uv_a = np.stack([xs[pick], ys[pick]], 1).astype(np.float64)
    uv_b, z_b = project(unproject(fa.depth, K, poses[4], uv_a), K, poses[7])
    inside = (z_b > 0) & (uv_b >= 0).all(1) & (uv_b[:, 0] <= SMALL.width - 1) & (uv_b[:, 1] <= SMALL.height - 1)
    rb = np.round(uv_b[inside]).astype(int)
    visible = np.abs(fb.depth[rb[:, 1], rb[:, 0]] - z_b[inside]) < 0.02 * z_b[inside]
    assert visible.mean() > 0.8 and inside.sum() > 2000
    m = uv_b[inside][visible].astype(np.float32)
    colour_b = cv2.remap(fb.image, m[:, 0], m[:, 1], cv2.INTER_LINEAR).reshape(-1, 3).astype(int)
    colour_a = fa.image[ys[pick][inside][visible], xs[pick][inside][visible]].astype(int)
    err = np.abs(colour_a - colour_b)
    assert np.median(err) <= 6 and np.mean(err) < 15


def test_night_is_darker_and_has_the_configured_noise():
    rng = np.random.default_rng(0)
    grey = np.full((200, 200, 3), 0.5, np.float32)
    flat = night(grey, NightConf(gain=1.0, gamma=1.0, noise_std=0.05, tint=(1.0, 1.0, 1.0)), rng)
    assert abs(flat.std() - 0.05) < 0.002 and abs(flat.mean() - 0.5) < 0.002
    conf = NightConf()
    dark = night(grey, NightConf(noise_std=0.0), rng)
    np.testing.assert_allclose(dark[0, 0], conf.gain * np.array(conf.tint) * 0.5**conf.gamma, rtol=1e-5)
    photo = read_image_photo()
    assert night(photo, conf, rng).mean() < 0.5 * photo.mean()
    # light falloff: full light at 0 m, (1 + ambient) / 2 of it at falloff_m, only the ambient part for the sky
    depth = np.array([[0.0, conf.falloff_m, np.inf]], np.float32)
    lit = night(np.full((1, 3, 3), 0.5, np.float32), NightConf(noise_std=0.0), rng, depth)[0, :, 0]
    np.testing.assert_allclose(lit / lit[0], [1.0, (1 + conf.ambient) / 2, conf.ambient], rtol=1e-5)
    with pytest.raises(ValueError, match="night: depth must be"):
        night(grey, conf, rng, depth)


def read_image_photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[::2, ::2].astype(np.float32) / 255.0


def test_blur_keeps_constants_and_smooths_texture():
    rng = np.random.default_rng(0)
    grey = np.full((64, 64, 3), 0.25, np.float32)
    np.testing.assert_allclose(blur(grey, BlurConf(length_px=9.0, noise_std=0.0), rng), 0.25, atol=1e-6)
    photo = read_image_photo()
    out = blur(photo, BlurConf(length_px=15.0, noise_std=0.0), rng)
    grad = lambda img: np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean()  # noqa: E731
    assert grad(out) < 0.7 * grad(photo)
    np.testing.assert_array_equal(apply_condition(photo, "day", SMALL, rng), photo)
    with pytest.raises(ValueError, match="unknown condition 'fog'"):
        apply_condition(photo, "fog", SMALL, rng)


def test_queries_are_near_but_not_on_the_database_trajectory():
    db = np.array([p.center for p in db_poses(SMALL)])
    poses, conditions = query_poses(SMALL)
    assert conditions == ["day", "night", "blur"]
    for q in poses:
        dist = np.linalg.norm(db - q.center, axis=1).min()
        assert 0.01 < dist < 8.0


@pytest.mark.parametrize(("build", "field"), [
    (lambda: SceneConf(width=0), "SceneConf.width"),
    (lambda: SceneConf(focal=-1.0), "SceneConf.focal"),
    (lambda: SceneConf(num_db=10), "SceneConf.num_db"),
    (lambda: SceneConf(query_conditions=("fog",)), "SceneConf.query_conditions"),
    (lambda: SceneConf(building_height_m=(9.0, 3.0)), "SceneConf.building_height_m"),
    (lambda: NightConf(gain=0.0), "SceneConf.night.gain"),
    (lambda: BlurConf(length_px=0.5), "SceneConf.blur.length_px"),
])
def test_bad_conf_values_name_the_field(build, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


def test_conf_from_yaml_is_strict(tmp_path):
    assert load_scene_conf("configs/scene_default.yaml") == SceneConf()
    assert load_scene_conf(None, ["night.noise_std=0.1"]).night.noise_std == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text("conf:\n  sead: 1\n")
    with pytest.raises(ConfError, match="sead"):
        load_scene_conf(bad)
    with pytest.raises(ValueError, match="SceneConf.offsets.yaw_deg"):
        load_scene_conf(None, ["offsets.yaw_deg=-1"])


def test_generate_scene_writes_images_and_ground_truth(tmp_path, world):
    files = generate_scene(SMALL, tmp_path / "scene", write_depth=True, world=world)
    assert files.db_names[0] == "db/0000.png" and len(files.db_names) == 12 and len(files.query_names) == 3
    poses = read_poses(files.poses_db)
    for name, expected in zip(files.db_names, db_poses(SMALL), strict=True):
        np.testing.assert_allclose(poses[name].R, expected.R, atol=1e-8)
        np.testing.assert_allclose(poses[name].t, expected.t, atol=1e-8)
    cameras = read_cameras(files.cameras)
    assert set(cameras) == set(files.db_names) | set(files.query_names)
    np.testing.assert_allclose(cameras["query/0000.png"].K_opencv, intrinsics(SMALL.focal, 320, 240))
    assert read_conditions(files.conditions) == dict(zip(files.query_names, ["day", "night", "blur"], strict=True))
    day = read_image(files.root / "db/0000.png")
    assert day.shape == (240, 320, 3)
    K = intrinsics(SMALL.focal, 320, 240)
    np.testing.assert_allclose(day, render(world, K, db_poses(SMALL)[0]).image_float, atol=1 / 255)
    q = read_poses(files.poses_query)
    night_img = read_image(files.root / "query/0001.png")
    assert night_img.mean() < 0.5 * render(world, K, q["query/0001.png"]).image_float.mean()
    depth = np.load(files.root / "depth/db/0000.npy")
    assert depth.shape == (240, 320) and depth.dtype == np.float32 and np.isfinite(depth).mean() > 0.5
    assert load_scene_conf(files.conf) == SMALL
