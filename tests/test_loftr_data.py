"""Coarse LoFTR training pairs: item layout, resized intrinsics, the ground-truth cache, augmentation, errors."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import visloc.train.loftr.data as loftr_data
from visloc.conf import ConfError
from visloc.data.world.pairs import PairsConf, generate_pairs
from visloc.data.world.pairs_files import read_pair
from visloc.errors import InputError
from visloc.io.images import ImageError, read_image
from visloc.train.loftr.data import WorldPairs, WorldPairsConf, augment_photometric, prepare_gt, resized_K
from visloc.train.loftr.supervision import coarse_gt
from visloc.utils.image_ops import rgb_to_gray


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs_train")
    generate_pairs(PairsConf(num_pairs=2), out, split="train", progress=False)  # 640x480, about 4 s
    return out


def _conf(root: Path, tmp_path: Path, **kw: object) -> WorldPairsConf:
    base = WorldPairsConf(root=str(root), size=(320, 240), cache_dir=str(tmp_path / "gt"), augment=False)
    return dataclasses.replace(base, **kw)


def test_item_layout_and_values(root: Path, tmp_path: Path) -> None:
    ds = WorldPairs(_conf(root, tmp_path), "train")
    assert len(ds) == 2
    it = ds[1]
    assert it["image0"].shape == it["image1"].shape == (1, 240, 320) and it["image0"].dtype == torch.float32
    assert 0.0 <= float(it["image0"].min()) and float(it["image0"].max()) <= 1.0
    assert it["matches0"].shape == (300,) and it["matches0"].dtype == torch.int64
    assert it["K0"].shape == it["K1"].shape == (3, 3) and it["K0"].dtype == torch.float32
    assert it["T_0to1"].shape == (4, 4) and it["T_0to1"].dtype == torch.float32
    r = ds.rows[1]
    assert it["name"] == r.name0 and it["level"] == r.level and it["overlap"] == pytest.approx(r.overlap)
    # the gray image resized with INTER_AREA, the GT of coarse_gt at scale 2
    gray = cv2.resize(rgb_to_gray(read_image(root / r.name0)), (320, 240), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(it["image0"][0].numpy(), gray)
    v0, v1 = read_pair(root, r.name0, r.name1)
    np.testing.assert_array_equal(it["matches0"].numpy(), coarse_gt(v0, v1, (15, 20), (15, 20), 16, (2, 2), (2, 2)))
    # T_0to1 carries camera-0 points to camera 1 as the poses do
    X = np.array([[1.0, -2.0, 7.0], [0.5, 0.3, 20.0]])
    T = it["T_0to1"].double().numpy()
    np.testing.assert_allclose(X @ T[:3, :3].T + T[:3, 3], v1.pose.transform(v0.pose.inverse().transform(X)),
                               atol=1e-4)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image0"].shape == (2, 1, 240, 320) and batch["matches0"].shape == (2, 300)
    assert batch["name"] == [ds.rows[0].name0, ds.rows[1].name0]


@pytest.mark.parametrize("size", [(320, 240), (160, 96)])
def test_resized_K_projects_where_the_resize_moves_the_native_projection(root: Path, tmp_path: Path,
                                                                         size: tuple[int, int]) -> None:
    ds = WorldPairs(_conf(root, tmp_path, size=size), "val")
    K = ds.cameras[ds.rows[0].name0].K_opencv
    K_small = ds[0]["K0"].double().numpy()
    s = np.array([640 / size[0], 480 / size[1]])
    X = np.array([[0.3, -0.2, 1.0], [-4.0, 1.5, 12.0], [2.0, 3.0, 5.0]])
    uv = (X @ K.T)[:, :2] / X[:, 2:]
    uv_small = (X @ K_small.T)[:, :2] / X[:, 2:]
    np.testing.assert_allclose(uv_small, (uv + 0.5) / s - 0.5, atol=1e-4)  # float32 K
    np.testing.assert_allclose(resized_K(K, (1.0, 1.0)), K)


def test_gt_cache_is_reused_and_a_corrupt_file_recomputed(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    conf = _conf(root, tmp_path)
    ds = WorldPairs(conf, "train")
    assert prepare_gt(ds, progress=False) == 2
    assert prepare_gt(ds, progress=False) == 0
    first = ds[0]["matches0"]
    assert ds.cache_path(0).is_file() and ds.cache_path(0).parent.name == "320x240_r16_tol0.01_cyc0.5"

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("coarse_gt called although the ground truth is cached")

    monkeypatch.setattr(loftr_data, "coarse_gt", boom)
    again = WorldPairs(conf, "train")  # a new epoch in a new worker
    torch.testing.assert_close(again[0]["matches0"], first)
    monkeypatch.undo()
    ds.cache_path(0).write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="visloc.train.loftr.data"):
        torch.testing.assert_close(ds[0]["matches0"], first)
    assert "corrupt ground-truth cache file" in caplog.text and str(ds.cache_path(0)) in caplog.text
    assert ds.gt(0)[1] is False  # rewritten whole
    other = WorldPairs(_conf(root, tmp_path, resolution=8, size=(320, 240)), "train")
    assert other.cache_path(0) != ds.cache_path(0) and other[0]["matches0"].shape == (1200,)


def test_augmentation_changes_intensities_only_and_is_seeded(root: Path, tmp_path: Path) -> None:
    conf = _conf(root, tmp_path, augment=True)
    train, val = WorldPairs(conf, "train"), WorldPairs(conf, "val")  # {split} absent: the same folder
    a, clean = train[0], val[0]
    for k in ("matches0", "K0", "K1", "T_0to1"):
        torch.testing.assert_close(a[k], clean[k])
    assert float((a["image0"] - clean["image0"]).abs().mean()) > 0.01
    assert not torch.equal(a["image0"] - clean["image0"], a["image1"] - clean["image1"])  # drawn per image
    torch.testing.assert_close(WorldPairs(conf, "train")[0]["image0"], a["image0"], rtol=0, atol=0)
    train.set_epoch(1)
    assert not torch.equal(train[0]["image0"], a["image0"])
    assert not torch.equal(WorldPairs(dataclasses.replace(conf, seed=1), "train")[0]["image0"], a["image0"])
    # on i.i.d. noise any geometric change would decorrelate the pixels; intensity changes keep them
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for seed in range(5):
        out = augment_photometric(np.random.default_rng(seed), noise, 1.0)
        assert out.dtype == np.float32 and out.shape == noise.shape and 0 <= out.min() and out.max() <= 1
        assert np.corrcoef(out.ravel(), noise.ravel())[0, 1] > 0.8
    np.testing.assert_allclose(augment_photometric(np.random.default_rng(3), noise, 0.0), noise, atol=1e-6)


def test_missing_files_name_the_file(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere: pairs folder not found"):
        WorldPairs(_conf(tmp_path / "nowhere", tmp_path), "train")
    copy = tmp_path / "pairs_train"
    shutil.copytree(root, copy)
    conf = _conf(tmp_path / "pairs_{split}", tmp_path)
    ds = WorldPairs(conf, "train")
    (copy / ds.rows[0].name1).unlink()
    with pytest.raises(ImageError, match=f"{copy / ds.rows[0].name1}: file not found"):
        ds[0]
    (copy / "depth" / "000001_0.h5").write_bytes(b"broken")
    with pytest.raises(InputError, match=f"{copy / 'depth' / '000001_0.h5'}: unreadable depth file"):
        ds[1]
    with pytest.raises(InputError, match="pairs_val: pairs folder not found"):
        WorldPairs(conf, "val")


def test_conf_checks() -> None:
    with pytest.raises(ConfError, match="not a multiple of the resolution 16"):
        WorldPairsConf(size=(320, 250))
    with pytest.raises(ConfError, match="photometric"):
        WorldPairsConf(photometric=-1.0)
    with pytest.raises(ValueError, match="split must be one of"):
        WorldPairsConf().folder("training")


def test_crop_windows_reindex_the_full_grid_exactly() -> None:
    # full grids 4 x 5 (image 0) and 4 x 6 (image 1); cell i of image 0 matches cell i + 1 of image 1's rows
    hw0, hw1 = (4, 5), (4, 6)
    full = np.full(20, -1, np.int64)
    for y in range(4):
        for x in range(5):
            full[y * 5 + x] = y * 6 + x + 1
    (oy0, ox0), (oy1, ox1), m = loftr_data.crop_windows(full, hw0, hw1, (2, 3), np.random.default_rng(0))
    assert 0 <= oy0 <= 2 and 0 <= ox0 <= 2 and 0 <= oy1 <= 2 and 0 <= ox1 <= 3
    for r in range(2):
        for c in range(3):
            ty, tx = oy0 + r, ox0 + c + 1  # the full grid's target
            inside = oy1 <= ty < oy1 + 2 and ox1 <= tx < ox1 + 3
            assert m[r * 3 + c] == ((ty - oy1) * 3 + tx - ox1 if inside else -1)
    with pytest.raises(ValueError, match="does not fit"):
        loftr_data.crop_windows(full, hw0, hw1, (5, 3), np.random.default_rng(0))


def test_crop_items_keep_geometry_consistent(root: Path, tmp_path: Path) -> None:
    full = WorldPairs(_conf(root, tmp_path, size=None), "train")
    crop = WorldPairs(_conf(root, tmp_path, size=None, crop=(320, 240)), "train")
    a, b = full[0], crop[0]
    assert b["image0"].shape == (1, 240, 320) and b["matches0"].shape == (300,)
    assert int((b["matches0"] >= 0).sum()) > 0.3 * int((a["matches0"] >= 0).sum()) * 300 / 1200
    # a crop's pixels are the full image's at the principal-point shift
    dx0 = round(float(a["K0"][0, 2] - b["K0"][0, 2]))
    dy0 = round(float(a["K0"][1, 2] - b["K0"][1, 2]))
    assert dx0 % 16 == 0 and dy0 % 16 == 0
    torch.testing.assert_close(b["image0"], a["image0"][:, dy0:dy0 + 240, dx0:dx0 + 320])
    assert WorldPairs(_conf(root, tmp_path, size=None, crop=(320, 240)), "val").rows  # val keeps whole images
    with pytest.raises(ConfError, match="data.crop"):
        WorldPairsConf(crop=(100, 240))
