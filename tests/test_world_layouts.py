"""GLDv2 and Revisited Oxford layouts of the world's landmark sets: writers, readers, tars, md5, ground truth."""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.data.errors import DatasetError
from visloc.data.world import gldv2_layout as gl
from visloc.data.world import revisited as rv
from visloc.eval.oxford_paris import RestrictedUnpickler, load_gnd
from visloc.io.poses import CameraPose


def _ids(n: int) -> list[str]:
    return [gl.make_image_id("test", i) for i in range(n)]


def _tree(root: Path, ids: list[str]) -> None:
    for i in ids:
        p = root / gl.image_relpath(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"jpeg of {i}".encode())


def test_ids_and_paths_follow_gldv2() -> None:
    assert gl.image_relpath("0123456789abcdef") == "0/1/2/0123456789abcdef.jpg"
    i = gl.make_image_id(3, "train", 7)
    assert len(i) == 16 and int(i, 16) >= 0 and i == gl.make_image_id(3, "train", 7) != gl.make_image_id(4, "train", 7)
    for bad in ("0123456789ABCDEF", "0123", "0123456789abcdeg"):
        with pytest.raises(ValueError, match="16 lower-case hex"):
            gl.image_relpath(bad)
    assert (gl.tar_name(0), gl.md5_name(12)) == ("images_000.tar", "md5.images_012.txt")


def test_csvs_parse_with_the_csv_module_as_gldv2(tmp_path: Path) -> None:
    ids = _ids(5)
    rows = [gl.Gldv2Row(i, f"world://x/{i}", 10 + k % 2) for k, i in enumerate(ids)]
    gl.write_train_csv(tmp_path / "train.csv", rows)
    gl.write_train_clean_csv(tmp_path / "train_clean.csv", {11: ids[1::2], 10: ids[0::2]})
    with open(tmp_path / "train.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "url", "landmark_id"]
    assert [(r["id"], int(r["landmark_id"])) for r in table] == [(r.id, r.landmark_id) for r in rows]
    with open(tmp_path / "train_clean.csv", newline="") as f:
        clean = list(csv.DictReader(f))
    assert list(clean[0]) == ["landmark_id", "images"] and [c["landmark_id"] for c in clean] == ["10", "11"]
    assert clean[0]["images"] == " ".join(ids[0::2])
    assert gl.read_train_csv(tmp_path / "train.csv") == rows
    assert gl.read_train_clean_csv(tmp_path / "train_clean.csv") == {10: tuple(ids[0::2]), 11: tuple(ids[1::2])}
    (tmp_path / "bad.csv").write_text("id,url,landmark_id\nnothex,u,3\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: image id must be 16"):
        gl.read_train_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("id,landmark_id\n")
    with pytest.raises(DatasetError, match="header must be id,url,landmark_id"):
        gl.read_train_csv(tmp_path / "bad.csv")


def test_tars_are_reproducible_safe_and_verified_by_md5(tmp_path: Path) -> None:
    ids = _ids(5)
    _tree(tmp_path, ids)
    tars = gl.pack_images(tmp_path, ids, 2)
    assert [t.name for t in tars] == ["images_000.tar", "images_001.tar", "images_002.tar"]
    first = tars[0].read_bytes()
    line = (tmp_path / "md5.images_000.txt").read_text()
    assert line == f"{hashlib.md5(first).hexdigest()}  images_000.tar\n"  # md5sum's format
    with tarfile.open(tars[0]) as tar:
        assert tar.getnames() == [gl.image_relpath(i) for i in ids[:2]]
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    tars[0].unlink()
    gl.pack_images(tmp_path, ids, 2)  # a re-run rewrites only the missing tar, byte for byte
    assert tars[0].read_bytes() == first
    gl.pack_images(tmp_path, ids[:2], 2)  # fewer images: the stale tars and md5 files go
    assert sorted(p.name for p in tmp_path.glob("*.t*")) == ["images_000.tar", "md5.images_000.txt"]
    tars[0].write_bytes(first[:-1] + b"x")
    with pytest.raises(DatasetError, match="md5 .* differs"):
        gl.verify_md5(tars[0], tmp_path / "md5.images_000.txt")


def test_unsafe_tar_members_are_refused(tmp_path: Path) -> None:
    for name in ("../../etc/x.jpg", "/abs/0123456789abcdef.jpg", "1/2/3/0123456789abcdef.jpg"):
        path = tmp_path / "evil.tar"
        with tarfile.open(path, "w") as tar:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
        with pytest.raises(DatasetError, match="is not a GLDv2 image"):
            gl.extract_tar(path, tmp_path / "out")
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("0/1/2/0123456789abcdef.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="is not a GLDv2 image"):
        gl.extract_tar(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reader_reads_extracted_and_packed_images(tmp_path: Path) -> None:
    ids = _ids(4)
    _tree(tmp_path, ids)
    gl.write_train_csv(tmp_path / "train.csv", [gl.Gldv2Row(i, "", k) for k, i in enumerate(ids)])
    loose = gl.Gldv2Train.open(tmp_path)
    assert loose.clean is None and loose.labels() == {i: k for k, i in enumerate(ids)}
    gl.pack_images(tmp_path, ids, 3)
    for i in ids:
        (tmp_path / gl.image_relpath(i)).unlink()
    packed = gl.Gldv2Train.open(tmp_path)
    assert [packed.read_bytes(i) for i in ids] == [f"jpeg of {i}".encode() for i in ids]
    assert sorted(gl.extract_tar(tmp_path / "images_001.tar", tmp_path / "x")) == [ids[3]]
    assert (tmp_path / "x" / gl.image_relpath(ids[3])).read_bytes() == f"jpeg of {ids[3]}".encode()


def _pose_at(center: np.ndarray) -> CameraPose:
    """Camera at ``center`` looking along +y (world), OpenCV axes: x_cam = x, y_cam = -z, z_cam = y."""
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    return CameraPose(R, -R @ center)


def test_pair_stats_and_labels_from_geometry() -> None:
    K = np.array([[50.0, 0, 31.5], [0, 50, 23.5], [0, 0, 1]])
    wall = np.full((48, 64), 7, np.int32)  # a wall at y = 10 filling the view
    q_pose = _pose_at(np.array([0.0, 0, 1]))
    depth = np.full((48, 64), 10.0, np.float32)
    q = rv.query_samples(wall, depth, K, q_pose, [7], max_points=100)
    assert len(q.points) <= 100 and np.allclose(q.points[:, 1], 10) and q.bbx == (0.0, 0.0, 64.0, 48.0)
    same = rv.pair_stats(q, wall, K, q_pose, [7], "day")
    assert same.overlap == 1.0 and same.angle_deg < 1e-6 and same.scale == pytest.approx(1.0)
    conf = rv.RevisitedConf()
    assert rv.label_pair(same, conf) == "easy"
    assert rv.label_pair(rv.PairStats(1.0, 0.0, 1.0, 3000, "night"), conf) == "hard"
    half = wall.copy()
    half[:, 32:] = 3  # another place hides the right half
    stats = rv.pair_stats(q, half, K, q_pose, [7], "day")
    assert stats.overlap == pytest.approx(0.5, abs=0.05)
    assert rv.label_pair(rv.PairStats(0.1, 5.0, 1.0, 3000, "day"), conf) == "junk"
    assert rv.label_pair(rv.PairStats(0.0, 5.0, 1.0, 0, "day"), conf) is None
    back = rv.pair_stats(q, wall, K, _pose_at(np.array([0.0, 20, 1])), [7], "day")  # wall behind the camera
    assert back.overlap == 0.0
    with pytest.raises(ConfError, match=r"^RevisitedConf.easy_min_overlap: "):
        rv.RevisitedConf(easy_min_overlap=0.1)


def test_gnd_pickle_loads_through_the_restricted_unpickler(tmp_path: Path) -> None:
    gnd = [rv.gnd_entry((1, 2, 30, 40), ["easy", None, "hard", "junk", "easy"])]
    path = rv.write_gnd(tmp_path / rv.gnd_name("rtest"), [f"db_{k}" for k in range(5)], ["q_0"], gnd)
    assert path.name == "gnd_rtest.pkl"
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f).load()
    assert data["gnd"][0] == {"bbx": [1.0, 2.0, 30.0, 40.0], "easy": [0, 4], "hard": [2], "junk": [3]}
    assert pickle.loads(path.read_bytes()) == data and path.read_bytes()[:2] == b"\x80\x02"  # protocol 2
    gt = load_gnd(path)
    assert gt.is_revisited and gt.qimlist == ("q_0",) and gt.gnd[0]["hard"].tolist() == [2]
