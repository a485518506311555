"""Feature HDF5 store: hloc's layout on disk, crash-safe staging, atomic merges."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from visloc.io import parts
from visloc.io.features_h5 import (
    FeatureStoreError,
    commit_features,
    done_names,
    list_feature_names,
    load_features,
    read_features,
    stage_features,
    write_features,
)
from visloc.types import Features


def _feats(n: int = 50, d: int = 128, seed: int = 0, w: int = 640, h: int = 480) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((n, d)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return {
        "keypoints": rng.uniform(0, [w, h], (n, 2)),  # float64 on purpose
        "scores": rng.uniform(0, 1, n).astype(np.float32),
        "descriptors": desc,
        "image_size": np.array([w, h]),
    }


def test_round_trip(tmp_path):
    path = tmp_path / "feats.h5"
    f0, f1 = _feats(50, 128, seed=0), _feats(7, 64, seed=1)
    write_features(path, {"im0.jpg": f0, "im1.jpg": f1})
    assert list_feature_names(path) == ["im0.jpg", "im1.jpg"]
    for name, ref in (("im0.jpg", f0), ("im1.jpg", f1)):
        got = read_features(path, name)
        assert set(got) == {"keypoints", "scores", "descriptors", "image_size"}
        assert got["keypoints"].dtype == np.float32
        assert got["descriptors"].dtype == np.float32
        assert got["descriptors"].shape == ref["descriptors"].shape
        assert got["descriptors"].flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got["descriptors"], ref["descriptors"])
        np.testing.assert_array_equal(got["keypoints"], ref["keypoints"].astype(np.float32))
        np.testing.assert_array_equal(got["scores"], ref["scores"])
        np.testing.assert_array_equal(got["image_size"], ref["image_size"])
    assert not parts.parts_dir(path).exists()


def test_on_disk_layout_is_hlocs(tmp_path):
    path = tmp_path / "feats.h5"
    f = _feats(50, 128)
    write_features(path, {"im.jpg": f})
    with h5py.File(path, "r") as fd:
        grp = fd["im.jpg"]
        assert isinstance(grp, h5py.Group)
        assert grp["descriptors"].shape == (128, 50)  # transposed: (D, N)
        np.testing.assert_array_equal(grp["descriptors"][()], f["descriptors"].T)
        assert grp["descriptors"].dtype == np.float32
        assert grp["keypoints"].shape == (50, 2)
        assert grp["keypoints"].dtype == np.float32
        assert grp["scores"].shape == (50,)
        np.testing.assert_array_equal(grp["image_size"][()], [640, 480])


def test_as_half_stores_float16(tmp_path):
    path = tmp_path / "feats.h5"
    f = _feats(30, 64)
    f["global_descriptor"] = np.random.default_rng(3).standard_normal(256).astype(np.float32)
    write_features(path, {"im.jpg": f}, as_half=True)
    with h5py.File(path, "r") as fd:
        assert fd["im.jpg/descriptors"].dtype == np.float16
        assert fd["im.jpg/descriptors"].shape == (64, 30)
        assert fd["im.jpg/scores"].dtype == np.float16
        assert fd["im.jpg/global_descriptor"].dtype == np.float16
        assert fd["im.jpg/keypoints"].dtype == np.float32  # never halved: sub-pixel positions
    got = read_features(path, "im.jpg")
    for key in ("descriptors", "scores", "global_descriptor"):
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], f[key], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got["keypoints"], f["keypoints"].astype(np.float32))


def test_global_only_features_listed(tmp_path):
    path = tmp_path / "global.h5"
    g = np.arange(8, dtype=np.float32)
    write_features(path, {"db/0001.jpg": {"global_descriptor": g}})
    assert list_feature_names(path) == ["db/0001.jpg"]
    np.testing.assert_array_equal(read_features(path, "db/0001.jpg")["global_descriptor"], g)


def test_load_features_gives_features(tmp_path):
    # local + global, global-only (as an extractor writes it: with image_size) and keypoints without
    # descriptors (as match_dense writes them)
    path = tmp_path / "feats.h5"
    f = _feats(20, 64)
    g = np.random.default_rng(4).standard_normal(32).astype(np.float32)
    g /= np.linalg.norm(g)
    glob = Features.global_only(g, (320, 240))
    dense = {"keypoints": f["keypoints"], "scores": f["scores"], "descriptors": np.zeros((20, 0), np.float32),
             "image_size": np.array([640, 480])}
    write_features(path, {"both.jpg": {**f, "global_descriptor": g}, "global.jpg": glob.numpy(), "dense.jpg": dense})
    both = load_features(path, "both.jpg")
    assert isinstance(both, Features) and both.image_size == (640, 480) and both.has_local
    assert both.num_keypoints == 20 and both.descriptor_dim == 64
    np.testing.assert_array_equal(both.keypoints.numpy(), f["keypoints"].astype(np.float32))
    np.testing.assert_array_equal(both.descriptors.numpy(), f["descriptors"])
    np.testing.assert_array_equal(both.global_descriptor.numpy(), g)
    got = load_features(path, "global.jpg")
    assert not got.has_local and got.num_keypoints == 0 and got.image_size == (320, 240)
    torch.testing.assert_close(got.global_descriptor, glob.global_descriptor, atol=0, rtol=0)
    got = load_features(path, "dense.jpg")
    assert got.num_keypoints == 20 and not got.has_local and got.global_descriptor is None


def test_load_features_errors_name_file_and_image(tmp_path):
    path = tmp_path / "feats.h5"
    f = _feats(5, 8)
    write_features(path, {"no_size.jpg": {"global_descriptor": np.ones(4, np.float32)},
                          "bad.jpg": {**f, "scores": f["scores"][:3]}})
    with pytest.raises(FeatureStoreError, match=r"feats.h5: features of image 'no_size.jpg' are malformed .*size"):
        load_features(path, "no_size.jpg")
    with pytest.raises(FeatureStoreError, match=r"features of image 'bad.jpg' are malformed .*Features.scores"):
        load_features(path, "bad.jpg")
    with pytest.raises(FeatureStoreError, match=r"no features for image 'nope.jpg'"):
        load_features(path, "nope.jpg")


def test_nested_names(tmp_path):
    path = tmp_path / "feats.h5"
    names = ["a/b/c.jpg", "a/b/d.jpg", "a/e.jpg", "top.png"]
    write_features(path, {n: _feats(5 + i, 16, seed=i) for i, n in enumerate(names)})
    assert list_feature_names(path) == sorted(names)
    with h5py.File(path, "r") as fd:
        assert isinstance(fd["a"], h5py.Group)
        assert isinstance(fd["a"]["b"], h5py.Group)
        assert isinstance(fd["a"]["b"]["c.jpg"], h5py.Group)
        assert "keypoints" not in fd["a"]
    for i, n in enumerate(names):
        assert read_features(path, n)["keypoints"].shape == (5 + i, 2)


def test_reads_file_written_by_hloc(tmp_path):
    path = tmp_path / "feats-superpoint-n4096-r1024.h5"
    rng = np.random.default_rng(5)
    kps = rng.uniform(0, 500, (40, 2)).astype(np.float32)
    desc_dn = rng.standard_normal((256, 40)).astype(np.float16)
    scores = rng.uniform(0, 1, 40).astype(np.float16)
    with h5py.File(path, "w") as fd:  # hloc's extract_features layout (default libver)
        grp = fd.create_group("query/night/img 01.jpg")
        grp.create_dataset("keypoints", data=kps)
        grp.create_dataset("descriptors", data=desc_dn)
        grp.create_dataset("scores", data=scores)
        grp.create_dataset("image_size", data=np.array([1024, 768]))
        grp.attrs["uncertainty"] = 1.0
    assert list_feature_names(path) == ["query/night/img 01.jpg"]
    got = read_features(path, "query/night/img 01.jpg")
    assert got["descriptors"].shape == (40, 256)
    assert got["descriptors"].dtype == np.float32
    np.testing.assert_array_equal(got["descriptors"], desc_dn.T.astype(np.float32))
    np.testing.assert_array_equal(got["keypoints"], kps)
    assert got["scores"].dtype == np.float32
    np.testing.assert_array_equal(got["scores"], scores.astype(np.float32))
    np.testing.assert_array_equal(got["image_size"], [1024, 768])


def test_resume_after_killed_run(tmp_path):
    path = tmp_path / "feats.h5"
    fx, fy, fz = _feats(10, 8, seed=1), _feats(11, 8, seed=2), _feats(12, 8, seed=3)
    write_features(path, {"x.jpg": fx})
    # A run that staged two images and was killed before its commit.
    stage_features(path, "y.jpg", fy)
    stage_features(path, "sub/z.jpg", fz)
    assert list_feature_names(path) == ["x.jpg"]
    assert done_names(path) == {"x.jpg", "y.jpg", "sub/z.jpg"}
    with pytest.raises(FeatureStoreError, match="y.jpg"):
        read_features(path, "y.jpg")
    # The next run skips what is done and commits everything.
    assert commit_features(path) == 2
    assert list_feature_names(path) == ["sub/z.jpg", "x.jpg", "y.jpg"]
    assert not parts.parts_dir(path).exists()
    for name, ref in (("x.jpg", fx), ("y.jpg", fy), ("sub/z.jpg", fz)):
        np.testing.assert_array_equal(read_features(path, name)["descriptors"], ref["descriptors"])
    assert commit_features(path) == 0  # nothing left to merge
    assert list_feature_names(path) == ["sub/z.jpg", "x.jpg", "y.jpg"]


def test_staged_without_existing_file(tmp_path):
    path = tmp_path / "new" / "feats.h5"
    stage_features(path, "a.jpg", _feats(4, 8))
    assert not path.exists()
    assert list_feature_names(path) == []
    assert done_names(path) == {"a.jpg"}
    assert commit_features(path) == 1
    assert list_feature_names(path) == ["a.jpg"]


def test_restaging_replaces_existing_image(tmp_path):
    path = tmp_path / "feats.h5"
    write_features(path, {"a.jpg": _feats(4, 8, seed=0)})
    new = _feats(9, 8, seed=9)
    write_features(path, {"a.jpg": new})
    assert list_feature_names(path) == ["a.jpg"]
    np.testing.assert_array_equal(read_features(path, "a.jpg")["descriptors"], new["descriptors"])


def test_interrupted_merge_keeps_original(tmp_path, monkeypatch):
    path = tmp_path / "feats.h5"
    fx = _feats(10, 8, seed=1)
    write_features(path, {"x.jpg": fx})
    before = path.read_bytes()
    stage_features(path, "y.jpg", _feats(11, 8, seed=2))
    stage_features(path, "z.jpg", _feats(12, 8, seed=3))

    original = parts.write_group
    calls = []

    def failing_write(fd, name, arrays):
        calls.append(name)
        if len(calls) == 2:  # the first group is already in the temporary file
            raise OSError("disk full")
        original(fd, name, arrays)

    monkeypatch.setattr(parts, "write_group", failing_write)
    with pytest.raises(OSError, match="disk full"):
        commit_features(path)
    assert len(calls) == 2
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert list_feature_names(path) == ["x.jpg"]
    np.testing.assert_array_equal(read_features(path, "x.jpg")["descriptors"], fx["descriptors"])
    assert parts.staged_names(path) == {"y.jpg", "z.jpg"}
    assert done_names(path) == {"x.jpg", "y.jpg", "z.jpg"}
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["feats.h5"]  # no temporary left

    assert commit_features(path) == 2
    assert list_feature_names(path) == ["x.jpg", "y.jpg", "z.jpg"]


def test_unreadable_part_is_skipped(tmp_path):
    path = tmp_path / "feats.h5"
    stage_features(path, "good.jpg", _feats(4, 8))
    (part,) = parts.parts_dir(path).glob("*/*.npz")  # <hh>/<sha1>.npz
    data = part.read_bytes()
    (parts.parts_dir(path) / "cut.npz").write_bytes(data[: len(data) // 2])  # e.g. a full disk
    (parts.parts_dir(path) / "junk.npz").write_bytes(b"not a zip")
    assert done_names(path) == {"good.jpg"}
    assert commit_features(path) == 1
    assert list_feature_names(path) == ["good.jpg"]


@pytest.mark.parametrize("content", [b"this is not an HDF5 file\n" * 10, b""])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "broken_feats.h5"
    path.write_bytes(content)
    with pytest.raises(FeatureStoreError, match="broken_feats.h5.*not a readable HDF5"):
        read_features(path, "a.jpg")
    with pytest.raises(FeatureStoreError, match="broken_feats.h5"):
        list_feature_names(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent_feats.h5"
    with pytest.raises(FeatureStoreError, match="absent_feats.h5.*not found"):
        read_features(path, "a.jpg")
    assert list_feature_names(path) == []
    assert done_names(path) == set()


def test_missing_image(tmp_path):
    path = tmp_path / "feats.h5"
    write_features(path, {"a/b.jpg": _feats(4, 8)})
    with pytest.raises(FeatureStoreError, match=r"feats.h5.*'a/c.jpg'"):
        read_features(path, "a/c.jpg")
    with pytest.raises(FeatureStoreError, match=r"'a/b.jpg/keypoints'"):
        read_features(path, "a/b.jpg/keypoints")  # a dataset is not an image
    assert issubclass(FeatureStoreError, ValueError)


def test_a_forged_shape_is_refused_before_any_allocation(tmp_path, monkeypatch):
    """HDF5 declares a shape without storing its chunks: 2.7 kB may ask for 1 GiB (or any amount)."""
    from visloc.io import shards

    path = tmp_path / "forged.h5"
    with h5py.File(path, "w") as fd:
        grp = fd.create_group("a.jpg")
        grp.create_dataset("keypoints", shape=(2**27, 2), dtype="f4", chunks=(1024, 2))  # 1 GiB, nothing stored
        grp.create_dataset("descriptors", data=np.zeros((8, 5), np.float32))
    assert path.stat().st_size < 10_000
    with pytest.raises(FeatureStoreError, match=r"forged.h5: /a.jpg/keypoints declares shape \(134217728, 2\) float32 "
                                                r"\(1024 MiB\) but the file stores 0 bytes of it"):
        read_features(path, "a.jpg")
    monkeypatch.setattr(shards, "SPARSE_CHECK_BYTES", 2**20)  # a stored dataset above the check reads as usual
    write_features(tmp_path / "dense.h5", {"b.jpg": _feats(2000, 256)})  # 2 MB, stored
    assert read_features(tmp_path / "dense.h5", "b.jpg")["descriptors"].shape == (2000, 256)
    monkeypatch.setattr(shards, "MAX_ARRAY_BYTES", 2**20)
    with pytest.raises(FeatureStoreError, match=r"declares shape \(134217728, 2\) float32 \(1.0 GiB\), more than one "
                                                r"item may hold"):
        read_features(path, "a.jpg")
