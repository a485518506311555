"""The map picture: size, what is drawn where, the choice of the projection plane."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from visloc.io.poses import CameraPose
from visloc.viz.map_plot import map_points, plot_map, projection_basis, reconstruction_poses

SIZE = (640, 480)


def upright(centre: np.ndarray, heading: float, world: np.ndarray | None = None) -> CameraPose:
    """A camera at ``centre`` looking horizontally (world y is down, as COLMAP's first camera), optionally
    with the whole world rotated by ``world``."""
    z = np.array([np.cos(heading), 0.0, np.sin(heading)])
    y = np.array([0.0, 1.0, 0.0])
    r = np.stack([np.cross(y, z), y, z])
    c = np.asarray(centre, dtype=np.float64)
    if world is not None:
        r, c = r @ world.T, world @ c
    return CameraPose(r, -r @ c)


def trajectory(world: np.ndarray | None = None, n: int = 20) -> dict[str, CameraPose]:
    """Database cameras along x (20 m), 1 m of lateral wiggle along z, looking along z."""
    return {f"db{i:02d}.jpg": upright([i, 0.0, np.sin(i)], np.pi / 2, world) for i in range(n)}


def pixel(img: np.ndarray, xy: np.ndarray, half: int = 4) -> np.ndarray:
    """RGB pixels ``[K, 3]`` of the window around ``(column, row)``."""
    c, r = np.round(xy).astype(int)
    return img[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1, :3].reshape(-1, 3).astype(int)


def has(window: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return bool((np.abs(window - np.array(rgb)).max(1) <= tol).any())


def test_plot_draws_every_layer_where_it_says(tmp_path):
    db = trajectory()
    gt = {
        "q0.jpg": upright([5.0, 0.0, 8.0], 0.3),
        "q1.jpg": upright([12.0, 0.0, -6.0], 1.0),
        "q2.jpg": upright([15.0, 0.0, 6.0], 2.0),
    }
    pred = {"q0.jpg": upright([7.0, 0.0, 9.0], 0.3), "q1.jpg": upright([12.0, 0.0, -6.0], 1.0)}
    pts = np.random.default_rng(0).uniform([-2, -3, -8], [22, 1, 10], size=(3000, 3))
    pic = plot_map(tmp_path / "map.png", pts, db, gt, pred, failed=["q1.jpg"], size=SIZE, title="test")
    assert pic.path.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with Image.open(pic.path) as im:
        assert im.size == SIZE and im.format == "PNG"
        img = np.asarray(im.convert("RGB"))
    white = (img.min(2) > 250).mean()
    assert 0.5 < white < 0.995  # neither blank nor filled
    assert {k: len(v) for k, v in pic.pixels.items()} == {
        "points": 3000,
        "database": 20,
        "gt": 3,
        "pred": 1,
        "failed": 2,
    }
    green, blue, red, dark = (44, 160, 44), (31, 119, 180), (214, 39, 40), (51, 51, 51)
    for xy in pic.pixels["gt"]:
        assert has(pixel(img, xy, 5), green)
    assert has(pixel(img, pic.pixels["pred"][0]), blue)
    for xy in pic.pixels["failed"]:  # q1 (marked failed) and q2 (no prediction)
        assert has(pixel(img, xy), red)
    for xy in pic.pixels["database"][2:-2]:
        assert has(pixel(img, xy, 2), dark)
    # an error line runs from q0's ground truth to its prediction: red at the midpoint
    mid = (pic.pixels["gt"][0] + pic.pixels["pred"][0]) / 2
    assert has(pixel(img, mid, 1), red, tol=60)
    # an orthographic top view keeps horizontal distances: q0 moved by (2, 1) m, db0 -> db2 is (2, sin 2) m
    assert np.linalg.norm(pic.pixels["gt"][0] - pic.pixels["pred"][0]) == pytest.approx(
        np.linalg.norm(pic.pixels["database"][0] - pic.pixels["database"][2]) * np.hypot(2, 1) / np.hypot(2, np.sin(2)),
        rel=0.02,
    )


def test_map_points_are_drawn(tmp_path):
    pts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0], [5, 5, 0.1]])
    pic = plot_map(tmp_path / "pts.png", pts, size=SIZE)
    img = np.asarray(Image.open(pic.path).convert("RGB"))
    for xy in pic.pixels["points"]:
        assert pixel(img, xy, 1).min() < 220  # a grey dot
    assert (img.min(2) > 250).mean() > 0.8


def test_projection_plane_is_horizontal_for_upright_cameras():
    world = Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_matrix()
    db = trajectory(world)
    centres = np.array([p.center for p in db.values()])
    down = np.array([p.R[1] for p in db.values()])
    basis = projection_basis(centres, down)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    up = world @ np.array([0.0, -1.0, 0.0])
    np.testing.assert_allclose(basis @ up, 0.0, atol=1e-12)  # the view looks straight down
    np.testing.assert_allclose(np.cross(*basis), up, atol=1e-12)  # right-handed, seen from above
    assert abs(basis[0] @ (world @ np.array([1.0, 0, 0]))) > 0.95  # x follows the trajectory


def test_projection_plane_without_cameras_is_the_points_main_plane():
    pts = np.random.default_rng(1).normal(size=(500, 3)) * [1.0, 8.0, 0.01] + [0, 0, 3]
    basis = projection_basis(np.zeros((0, 3)), None, pts)
    assert abs(basis[0, 1]) > 0.99 and abs(basis[1, 0]) > 0.99
    # cameras looking straight down disagree on "up" in the image plane: also the points' plane
    down = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    basis = projection_basis(np.array([[0.0, 0, 10], [1.0, 0, 10]]), down, pts)
    np.testing.assert_allclose(np.abs(basis[:, 2]), 0.0, atol=0.05)


def test_reconstruction_gives_points_and_trajectory(tmp_path):
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[500, 500, 320, 240], camera_id=1)
    )
    for i in range(4):
        pose = upright([2.0 * i, 0.0, 0.0], np.pi / 2)
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=f"im{i}.jpg", camera_id=1, image_id=i + 1),
            pycolmap.Rigid3d(pycolmap.Rotation3d(pose.R), pose.t),
        )
    for j in range(6):
        rec.add_point3D(np.array([j, 0.5, 5.0]), pycolmap.Track())
    poses = reconstruction_poses(rec)
    assert sorted(poses) == [f"im{i}.jpg" for i in range(4)]
    np.testing.assert_allclose(poses["im3.jpg"].center, [6.0, 0, 0], atol=1e-9)
    assert map_points(rec).shape == (6, 3)
    pic = plot_map(tmp_path / "rec.png", rec, size=SIZE)
    assert len(pic.pixels["database"]) == 4 and len(pic.pixels["points"]) == 6


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.png: nothing to draw"):
        plot_map(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"points: expected an array \[N, 3\]"):
        plot_map(tmp_path / "bad.png", np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"size: expected \(width, height\)"):
        plot_map(tmp_path / "small.png", np.zeros((4, 3)), size=(10, 480))
    assert not list(tmp_path.iterdir())
