"""The ``pairs`` world generator on a small city: determinism, splits, depth, poses, overlap, bins, resume, confs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import visloc.data.world.pairs_make as pairs_make
from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.render import intrinsics, render
from visloc.data.world import generator_conf
from visloc.data.world.pairs import PairsConf, generate_pairs
from visloc.data.world.pairs_files import depth_name, read_depth, read_info, read_pair
from visloc.data.world.pairs_gt import (
    UNMATCHED,
    baseline_m,
    correspondences,
    grid_points,
    gt_matches,
    pair_overlap,
    rotation_angle_deg,
)
from visloc.io.images import read_image
from visloc.io.pairs import read_pairs
from visloc.io.poses import read_cameras, read_poses

CITY = CityConf(num_streets_x=3, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, px_per_m=12.0,
                ground_px_per_m=6.0, width=128, height=96, focal=96.0, extra_photos=False)
CONF = PairsConf(city=CITY, num_pairs=6)
SPLIT = "test"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(CONF, out, split=SPLIT, progress=False)
    return out


def _view(root: Path):
    cameras, poses = read_cameras(root / "cameras.txt"), read_poses(root / "poses.txt")
    return cameras, poses


def test_same_seed_same_files_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    files = generate_pairs(CONF, tmp_path / "again", split=SPLIT, progress=False)
    assert _files(tmp_path / "again") == _files(dataset)
    assert len(files.names) == 6 and files.pairs.read_text().count("\n") == 6
    other = dataclasses.replace(CONF, city=dataclasses.replace(CITY, seed=1), num_pairs=2)
    generate_pairs(other, tmp_path / "other", split=SPLIT, progress=False)
    assert (tmp_path / "other" / "poses.txt").read_text() != (dataset / "poses.txt").read_text()


def test_interrupted_run_resumes_to_identical_files(dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = pairs_make.make_pair

    def dies_at_4(ctx, writer, index):  # noqa: ANN001 - the patched function's own arguments
        if index == 4:
            raise KeyboardInterrupt
        real(ctx, writer, index)

    monkeypatch.setattr(pairs_make, "make_pair", dies_at_4)
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(CONF, tmp_path, split=SPLIT, progress=False)
    assert not (tmp_path / "pairs.txt").exists() and not (tmp_path / "world.yaml").exists()
    monkeypatch.setattr(pairs_make, "make_pair", real)
    files = generate_pairs(CONF, tmp_path, split=SPLIT, progress=False)
    assert files.summary.already_done == 4 and files.summary.done == 2
    assert _files(tmp_path) == _files(dataset)
    again = generate_pairs(CONF, tmp_path, split=SPLIT, progress=False)  # finished: returns at once
    assert again.names == files.names and again.summary.done == 0


def test_views_show_only_places_of_the_split_and_depth_is_the_rendered_one(dataset: Path) -> None:
    city = build_city(CITY)
    cameras, poses = _view(dataset)
    split_of = city.place_split()
    skies = 0
    for name, pose in poses.items():
        frame = render(city, cameras[name].K_opencv, pose)  # re-rendered from the stored camera
        path = dataset / depth_name(name)
        seen = frame.place_id[frame.place_id >= 0]
        assert seen.size > 0 and (split_of[seen] == 2).all(), name  # 2: test
        assert np.array_equal(read_depth(path, "place"), frame.place_id)  # the stored place ids are those
        assert np.array_equal(read_depth(path, "plane"), frame.plane_index)
        depth = read_depth(path)
        assert depth.dtype == np.float32 and depth.shape == (CITY.height, CITY.width)
        sky = np.isinf(frame.depth)
        skies += int(sky.sum())
        assert (depth[sky] == 0).all() and (depth[~sky] > 0).all()
        assert np.array_equal(depth[~sky], frame.depth[~sky])
    assert skies > 0


def test_cameras_poses_and_pairs_parse_with_the_project_readers(dataset: Path) -> None:
    cameras, poses = _view(dataset)
    pairs = read_pairs(dataset / "pairs.txt")
    names = [n for p in pairs for n in p]
    assert len(pairs) == 6 and sorted(names) == sorted(poses) == sorted(cameras)
    for name in names:
        assert cameras[name].model == "PINHOLE"
        assert np.allclose(cameras[name].K_opencv, intrinsics(CITY.focal, CITY.width, CITY.height))
        assert read_image(dataset / name).shape[:2] == (CITY.height, CITY.width)
    assert [(r.name0, r.name1) for r in read_info(dataset / "pairs_info.csv")] == pairs


def test_overlap_angle_and_baseline_recomputed_from_the_files_match(dataset: Path) -> None:
    cameras, poses = _view(dataset)
    for row in read_info(dataset / "pairs_info.csv"):
        view0, view1 = read_pair(dataset, row.name0, row.name1, cameras=cameras, poses=poses)
        o01, o10, o = pair_overlap(view0, view1, stride=CONF.overlap_stride, rel_tol=CONF.depth_rel_tol)
        assert (o01, o10, o) == pytest.approx((row.overlap_0to1, row.overlap_1to0, row.overlap), abs=1e-7)
        assert rotation_angle_deg(view0.pose, view1.pose) == pytest.approx(row.angle_deg, abs=1e-5)
        assert baseline_m(view0.pose, view1.pose) == pytest.approx(row.baseline_m, abs=1e-5)
        assert CONF.baseline_m[0] - 1e-6 <= row.baseline_m <= CONF.baseline_m[1] + 1e-6


def test_difficulty_bins_are_assigned_as_documented(dataset: Path) -> None:
    rows = read_info(dataset / "pairs_info.csv")
    for i, row in enumerate(rows):
        assert CONF.min_overlap < row.overlap <= CONF.max_overlap
        assert (row.overlap_level, row.angle_level, row.level) == CONF.levels(row.overlap, row.angle_deg)
        assert row.level == i % 3 and row.bin == ("easy", "medium", "hard")[row.level]  # balanced by default
    # overlap bins (0.1, 0.3], (0.3, 0.5], (0.5, 0.7] are levels 2, 1, 0; angle edges 15 and 30 degrees
    assert CONF.levels(0.7, 0.0) == (0, 0, 0) and CONF.levels(0.5, 0.0) == (1, 0, 1)
    assert CONF.levels(0.5000001, 14.99) == (0, 0, 0) and CONF.levels(0.3, 15.0) == (2, 1, 2)
    assert CONF.levels(0.6, 30.0) == (0, 2, 2) and CONF.levels(0.31, 29.0) == (1, 1, 1)


def test_a_pixel_mapped_there_and_back_lands_within_005_px(dataset: Path) -> None:
    for name0, name1 in read_pairs(dataset / "pairs.txt")[:3]:
        view0, view1 = read_pair(dataset, name0, name1)
        uv0 = grid_points(view0.size, 1)
        uv1, ok = correspondences(uv0, view0, view1)
        back, ok_back = correspondences(uv1[ok], view1, view0)  # sub-pixel: exact with the stored plane labels
        assert ok_back.sum() > 0.9 * ok.sum() > 1000
        assert np.linalg.norm(back[ok_back] - uv0[ok][ok_back], axis=1).max() < 0.05


def test_gt_matches_recover_shuffled_projections_on_a_stored_pair(dataset: Path) -> None:
    view0, view1 = read_pair(dataset, *read_pairs(dataset / "pairs.txt")[0])
    rng = np.random.default_rng(0)
    kp0 = rng.uniform((0, 0), (CITY.width - 1, CITY.height - 1), (300, 2))
    proj, ok = correspondences(kp0, view0, view1)
    order = rng.permutation(np.flatnonzero(ok))
    kp1 = proj[order] + rng.normal(0.0, 0.3, (len(order), 2))  # the co-visible ones, shuffled, 0.3 px noise
    gt = gt_matches(kp0, kp1, view0, view1)
    truth = np.full(len(kp0), UNMATCHED)
    truth[order] = np.arange(len(order))
    matched = gt.matches0 >= 0
    assert matched.sum() > 0.8 * len(order)  # the rest: ignored (a neighbour's projection within 5 px, edges)
    assert np.array_equal(gt.matches0[matched], truth[matched])
    assert (gt.matches0[~ok] < 0).all()


def test_conditions_per_image_come_from_the_conf(tmp_path: Path) -> None:
    conf = dataclasses.replace(CONF, num_pairs=1, conditions0=("winter",), conditions1=("night",))
    generate_pairs(conf, tmp_path, split=SPLIT, progress=False)
    row = read_info(tmp_path / "pairs_info.csv")[0]
    assert (row.condition0, row.condition1) == ("winter", "night")
    _, poses = _view(tmp_path)
    K = intrinsics(CITY.focal, CITY.width, CITY.height)
    summer = build_city(CITY)
    day = render(summer, K, poses[row.name1]).image
    assert read_image(tmp_path / row.name1).mean() < 0.5 * day.mean()
    # winter: rendered from the winter city (textures swapped, same geometry: the depth is the summer one)
    image0, summer0 = read_image(tmp_path / row.name0), render(summer, K, poses[row.name0])
    assert np.abs(image0.astype(float) - summer0.image).mean() > 5
    depth0 = read_depth(tmp_path / depth_name(row.name0))
    assert np.array_equal(depth0, np.where(np.isinf(summer0.depth), 0, summer0.depth))


@pytest.mark.parametrize(("change", "field"), [
    ({"num_pairs": 0}, "PairsConf.num_pairs"),
    ({"num_pairs": 20_000}, "PairsConf.num_pairs"),  # 40 000 frames > max_frames
    ({"baseline_m": (3.0, 1.0)}, "PairsConf.baseline_m"),
    ({"min_overlap": 0.8}, "PairsConf.max_overlap"),
    ({"angle_bins_deg": (15.0,)}, "PairsConf.angle_bins_deg"),
    ({"angle_bins_deg": (30.0, 15.0)}, "PairsConf.angle_bins_deg"),
    ({"conditions1": ()}, "PairsConf.conditions1"),
    ({"depth_rel_tol": 0.0}, "PairsConf.depth_rel_tol"),
    ({"yaw_change_deg": 200.0}, "PairsConf.yaw_change_deg"),
])
def test_a_bad_conf_field_fails_naming_it(change: dict, field: str) -> None:
    with pytest.raises(ConfError, match=field.replace(".", r"\.")):
        dataclasses.replace(CONF, **change)


def test_cli_reaches_the_conf_and_reports_a_bad_field_in_one_line(tmp_path: Path) -> None:
    conf = generator_conf("pairs", seed=3, overrides=["num_pairs=4", "conditions1=[night+fog]"])
    assert conf.city.seed == 3 and conf.num_pairs == 4 and conf.conditions1 == ("night+fog",)
    result = CliRunner().invoke(app, ["data", "world", "pairs", "--out", str(tmp_path), "--set", "num_pairs=0"])
    assert result.exit_code == 2
    assert "PairsConf.num_pairs" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(ConfError, match="split"):
        generate_pairs(CONF, tmp_path, split="nope", progress=False)  # type: ignore[arg-type]
