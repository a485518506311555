"""Coarse LoFTR ground truth: exact cell matches on constructed planes, occlusion, one-to-one, a world pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visloc.data.world.pairs import PairsConf, generate_pairs
from visloc.data.world.pairs_files import read_info, read_pair
from visloc.data.world.pairs_gt import View, gt_matches
from visloc.io.poses import CameraPose
from visloc.train.loftr.supervision import cell_centers, cell_index, coarse_gt

R = 16
W, H = 128, 96  # grid (6, 8)
HW = (H // R, W // R)


def _view(depth: np.ndarray, f: float, tx: float = 0.0, labels: np.ndarray | None = None) -> View:
    h, w = depth.shape
    K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    if labels is None:
        labels = np.where(depth > 0, 0, -1).astype(np.int32)
    return View(depth.astype(np.float32), K, CameraPose(np.eye(3), np.array([tx, 0.0, 0.0])), labels)


def _plane(w: int = W, h: int = H, z: float = 10.0) -> np.ndarray:
    return np.full((h, w), z, np.float32)


def test_cell_centers_and_index_exact() -> None:
    c = cell_centers((2, 3), R)
    assert c.shape == (6, 2)
    np.testing.assert_array_equal(c[:4], [[7.5, 7.5], [23.5, 7.5], [39.5, 7.5], [7.5, 23.5]])
    xy = np.array([[-0.5, -0.5], [15.49, 0.0], [15.5, 0.0], [47.49, 31.4], [47.5, 0.0], [0.0, 31.5], [-0.51, 0],
                   [np.nan, 3.0]])
    np.testing.assert_array_equal(cell_index(xy, (2, 3), R), [0, 0, 1, 5, -1, -1, -1, -1])
    np.testing.assert_array_equal(cell_index(c, (2, 3), R), np.arange(6))


def test_identity_pair_matches_every_surface_cell_and_no_sky_cell() -> None:
    depth = _plane()
    depth[:32] = 0.0  # the two top rows of cells are sky
    v = _view(depth, f=100.0)
    m = coarse_gt(v, v, HW, HW, R)
    assert m.dtype == np.int64 and m.shape == (48,)
    expected = np.where(np.arange(48) >= 16, np.arange(48), -1)
    np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize(("shift_px", "offset"), [(7, 0), (9, 1), (16, 1)])
def test_horizontal_shift_of_a_fronto_parallel_plane(shift_px: int, offset: int) -> None:
    # camera 1 moved by tx: u1 = u0 + f tx / z, so the content moves right by shift_px pixels
    f, z = 160.0, 10.0
    v0, v1 = _view(_plane(z=z), f), _view(_plane(z=z), f, tx=shift_px * z / f)
    m = coarse_gt(v0, v1, HW, HW, R)
    col = np.arange(48) % 8
    # the centre lands in the cell of the nearest centre; the last column's leaves the image (x > W - 1)
    # unless the shift is under half a cell (7 px: 119.5 + 7 = 126.5 <= 127)
    last_out = (8 - 1) * R + 7.5 + shift_px > W - 1
    expected = np.where((col < 7) | (not last_out), np.arange(48) + offset, -1)
    np.testing.assert_array_equal(m, expected)


def test_shift_with_resize_scales() -> None:
    # native 256x192, trained at 128x96 (scale 2): a 32 native px shift is one resized cell
    f, z = 320.0, 10.0
    d = _plane(2 * W, 2 * H, z)
    m = coarse_gt(_view(d, f), _view(d, f, tx=32 * z / f), HW, HW, R, (2.0, 2.0), (2.0, 2.0))
    col = np.arange(48) % 8
    np.testing.assert_array_equal(m, np.where(col < 7, np.arange(48) + 1, -1))


def test_a_nearer_surface_in_image_1_occludes_its_cells() -> None:
    d1 = _plane()
    d1[32:64, 32:80] = 5.0  # an occluder over cell rows 2-3, columns 2-4 of image 1
    labels1 = np.zeros((H, W), np.int32)
    labels1[32:64, 32:80] = 1
    v0, v1 = _view(_plane(), 100.0), _view(d1, 100.0, labels=labels1)
    m = coarse_gt(v0, v1, HW, HW, R)
    row, col = np.arange(48) // 8, np.arange(48) % 8
    hidden = (row >= 2) & (row <= 3) & (col >= 2) & (col <= 4)
    np.testing.assert_array_equal(m, np.where(hidden, -1, np.arange(48)))
    m_no_check = coarse_gt(v0, v1, HW, HW, R, rel_tol=1.0)  # 100 % tolerance: the occluder passes
    np.testing.assert_array_equal(m_no_check, np.arange(48))


def test_bad_arguments_raise() -> None:
    v = _view(_plane(), 100.0)
    with pytest.raises(ValueError, match="scale0"):
        coarse_gt(v, v, HW, HW, R, scale0=(0.0, 1.0))
    with pytest.raises(ValueError, match="resolution"):
        coarse_gt(v, v, HW, HW, 0)
    with pytest.raises(ValueError, match="grid"):
        coarse_gt(v, v, (0, 8), HW, R)


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(PairsConf(num_pairs=2), out, split="train", progress=False)  # 640x480, about 4 s
    return out


def test_world_pair_one_to_one_symmetric_and_as_gt_matches(world_pairs: Path) -> None:
    hw = (30, 40)
    for r in read_info(world_pairs / "pairs_info.csv"):
        v0, v1 = read_pair(world_pairs, r.name0, r.name1)
        m0, m1 = coarse_gt(v0, v1, hw, hw, R), coarse_gt(v1, v0, hw, hw, R)
        i = np.flatnonzero(m0 >= 0)
        assert len(i) > 200
        assert len(np.unique(m0[i])) == len(i)  # one-to-one
        np.testing.assert_array_equal(m1[m0[i]], i)  # the same matches seen from image 1
        assert (m1 >= 0).sum() == len(i)
        # independent: the KD-tree mutual nearest neighbours of pairs_gt on the cell centres, any distance
        # within a cell (half its diagonal) accepted: the same matches
        c = cell_centers(hw, R)
        th = R / 2 * np.sqrt(2) + 1e-6
        g = gt_matches(c, c, v0, v1, pos_th=th, neg_th=th)
        np.testing.assert_array_equal(np.where(g.matches0 >= 0, g.matches0, -1), m0)
        # share of cells with a match against the pair's (pixel) overlap, min of both directions: one-to-one
        # bounds it by the overlap (measured at most +0.007 above it on 60 val pairs, from cell sampling);
        # foreshortening loses loop-backs (these two pairs: 0.81 and 0.90 of the overlap; 60 val pairs:
        # 0.41 to 1.02, mean 0.044 below)
        frac = len(i) / m0.size
        assert 0.75 * r.overlap <= frac <= r.overlap + 0.03, (r.name0, frac, r.overlap)
