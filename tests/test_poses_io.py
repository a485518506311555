import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from visloc.io.poses import (
    Camera,
    CameraPose,
    PoseFileError,
    read_cameras,
    read_poses,
    write_cameras,
    write_poses,
)


def test_qvec_round_trip_and_convention():
    # 90 deg about z: qw = cos(45), qz = sin(45); R maps x to y
    q = [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]
    pose = CameraPose.from_qvec(q, [1, 2, 3])
    np.testing.assert_allclose(pose.R @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(pose.qvec, q, atol=1e-12)
    # centre: R c + t = 0
    np.testing.assert_allclose(pose.R @ pose.center + pose.t, 0, atol=1e-12)
    np.testing.assert_allclose(pose.transform(pose.center[None]), 0, atol=1e-12)


def test_qvec_sign_is_canonical():
    pose = CameraPose.from_qvec([-0.5, -0.5, -0.5, -0.5], [0, 0, 0])
    assert pose.qvec[0] > 0
    np.testing.assert_allclose(pose.qvec, [0.5, 0.5, 0.5, 0.5], atol=1e-12)


def test_compose_and_inverse():
    rng = np.random.default_rng(0)
    a = CameraPose(Rotation.random(random_state=1).as_matrix(), rng.normal(size=3))
    b = CameraPose(Rotation.random(random_state=2).as_matrix(), rng.normal(size=3))
    x = rng.normal(size=(5, 3))
    np.testing.assert_allclose((a * b).transform(x), a.transform(b.transform(x)), atol=1e-12)
    ident = a * a.inverse()
    np.testing.assert_allclose(ident.R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(ident.t, 0, atol=1e-12)


def test_pose_checks():
    with pytest.raises(ValueError, match="not a rotation"):
        CameraPose(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(ValueError, match=r"R \[3, 3\]"):
        CameraPose(np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match="non-zero quaternion"):
        CameraPose.from_qvec([0, 0, 0, 0], [0, 0, 0])


def test_poses_file_round_trip(tmp_path):
    poses = {f"db/{i:03d}.png": CameraPose(Rotation.random(random_state=i).as_matrix(), [i, -i, 0.5 * i])
             for i in range(4)}
    path = write_poses(tmp_path / "poses.txt", poses)
    back = read_poses(path)
    assert list(back) == list(poses)
    for name, pose in poses.items():
        np.testing.assert_allclose(back[name].R, pose.R, atol=1e-9)
        np.testing.assert_allclose(back[name].t, pose.t, atol=1e-9)
    first = path.read_text().splitlines()[0].split()
    assert first[0] == "db/000.png" and len(first) == 8


def test_poses_file_errors(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("# comment\n\na.png 1 0 0 0 0 0\n")
    with pytest.raises(PoseFileError, match=r"bad.txt:3: expected 'name qw qx qy qz tx ty tz'"):
        read_poses(p)
    p.write_text("a.png 1 0 0 0 0 0 0\na.png 1 0 0 0 0 0 0\n")
    with pytest.raises(PoseFileError, match=r"bad.txt:2: duplicate image 'a.png'"):
        read_poses(p)
    p.write_text("a.png 1 0 0 x 0 0 0\n")
    with pytest.raises(PoseFileError, match=r"bad.txt:1:"):
        read_poses(p)
    with pytest.raises(PoseFileError, match="file not found"):
        read_poses(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="whitespace"):
        write_poses(tmp_path / "o.txt", {"a b.png": CameraPose(np.eye(3), np.zeros(3))})


def test_camera_convention_and_file(tmp_path):
    K = np.array([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]])
    cam = Camera.from_opencv(K, 640, 480)
    assert cam.model == "PINHOLE" and cam.params == (500.0, 510.0, 320.0, 240.0)
    np.testing.assert_allclose(cam.K_opencv, K)
    simple = Camera("SIMPLE_RADIAL", 640, 480, (600, 320, 240, 0.01))
    np.testing.assert_allclose(simple.K_opencv, [[600, 0, 319.5], [0, 600, 239.5], [0, 0, 1]])
    path = write_cameras(tmp_path / "cameras.txt", {"a.png": cam, "b.png": simple})
    assert path.read_text().splitlines()[0] == "a.png PINHOLE 640 480 500.0 510.0 320.0 240.0"
    assert read_cameras(path) == {"a.png": cam, "b.png": simple}
    pc = cam.to_pycolmap()
    np.testing.assert_allclose(pc.calibration_matrix(), [[500, 0, 320], [0, 510, 240], [0, 0, 1]])


def test_camera_errors(tmp_path):
    with pytest.raises(ValueError, match="PINHOLE takes 4 parameters, got 3"):
        Camera("PINHOLE", 640, 480, (1, 2, 3))
    with pytest.raises(ValueError, match="unknown model 'PINHOL'"):
        Camera("PINHOL", 640, 480, (1, 2, 3, 4))
    p = tmp_path / "cams.txt"
    p.write_text("a.png PINHOLE 640 480 1 2 3\n")
    with pytest.raises(PoseFileError, match=r"cams.txt:1: Camera: PINHOLE takes 4"):
        read_cameras(p)
