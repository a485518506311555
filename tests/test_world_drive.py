"""The drive generator on a small city: layout, ground truth, split rule, determinism, budget, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from visloc.conf import ConfError
from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import foreign_fraction
from visloc.data.scene.render import intrinsics, render
from visloc.data.world import generator_conf
from visloc.data.world.base import ItemWriter
from visloc.data.world.drive import DriveConf, TraversalConf, generate_drive, origin_of
from visloc.data.world.drive_io import read_frames_txt, read_poses_csv
from visloc.data.world.geodesy import geodetic_to_enu
from visloc.data.world.trajectory import VehicleConf
from visloc.io.poses import CameraPose, read_cameras, read_poses

SPLIT = "train"


def small_conf(**changes: object) -> DriveConf:
    conf = DriveConf(
        city=CityConf(seed=3, num_streets_x=4, num_streets_y=4, px_per_m=6.0, ground_px_per_m=4.0),
        route_length_m=160.0, route_tries=3,
        traversals=(TraversalConf("day1", "day", 0.0, 1.0), TraversalConf("night1", "night+fog", 0.7, 0.8)),
        vehicle=VehicleConf(stop_probability=1.0, stop_dwell_s=1.0),
        pose_hz=200, render_hz=2, width=64, height=48, focal=50.0, max_frames=1000)
    return dataclasses.replace(conf, **changes)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def drive_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("drive")
    conf = small_conf()
    return conf, generate_drive(conf, out, split=SPLIT, progress=False)


@pytest.fixture(scope="module")
def city():
    return build_city(small_conf().city)


def test_layout_and_files(drive_run) -> None:
    conf, files = drive_run
    route = yaml.safe_load(files.route.read_text())
    assert (files.root / "world.yaml").is_file() and not list(files.root.rglob("*.tmp"))
    assert [t["name"] for t in route["traversals"]] == ["day1", "night1"]
    for tf in files.traversals:
        frames = read_frames_txt(tf.frames_txt)
        assert frames and len(frames) == len(tf.frames)
        names = [n for _, n in frames]
        assert all(n.startswith(f"{tf.name}/frames/") and n.endswith(".png") for n in names)
        assert all((files.root / n).is_file() for n in names)
        assert sorted(read_poses(tf.poses)) == sorted(names) == sorted(read_cameras(tf.cameras))
        assert len(list((files.root / tf.name / "frames").iterdir())) == len(names)
    again = generate_drive(conf, files.root, split=SPLIT, progress=False)  # a finished job returns at once
    assert again.summary.done == 0 and again.summary.already_done == sum(len(t.frames) for t in files.traversals)
    assert again.traversals == files.traversals


def test_timestamps_at_the_requested_rates(drive_run) -> None:
    conf, files = drive_run
    for tf in files.traversals:
        t = read_poses_csv(tf.poses_csv)["t_us"]
        assert t.dtype == np.int64 and t[0] == 0
        assert np.array_equal(np.diff(t), np.full(len(t) - 1, 1_000_000 // conf.pose_hz))
        ft = np.array([t_ for t_, _ in read_frames_txt(tf.frames_txt)])
        assert np.isin(ft, t).all() and np.all(np.diff(ft) % (1_000_000 // conf.render_hz) == 0)
        assert np.all(np.diff(ft) > 0)


def test_poses_match_positions_and_gps(drive_run) -> None:
    conf, files = drive_run
    v = conf.vehicle
    for tf in files.traversals:
        p = read_poses_csv(tf.poses_csv)
        centre = np.stack([p["x"], p["y"], p["z"]], 1)
        heading = np.deg2rad(p["heading_deg"])
        # the camera centre is the vehicle's ground point plus the mount: forward, up
        np.testing.assert_allclose(centre[:, 2], v.cam_height_m, atol=1e-6)
        row = {int(t): i for i, t in enumerate(p["t_us"])}
        poses = read_poses(tf.poses)
        for t_us, name in read_frames_txt(tf.frames_txt):
            pose = poses[name]
            i = row[t_us]
            np.testing.assert_allclose(pose.center, centre[i], atol=1e-6)
            q = CameraPose.from_qvec([p[k][i] for k in ("qw", "qx", "qy", "qz")], pose.t)
            np.testing.assert_allclose(q.R, pose.R, atol=1e-7)
            fwd = pose.R[2]  # optical axis in world coordinates
            assert np.arctan2(fwd[1], fwd[0]) == pytest.approx(np.angle(np.exp(1j * heading[i])), abs=1e-6)
            assert np.rad2deg(np.arcsin(fwd[2])) == pytest.approx(v.cam_pitch_deg, abs=1e-6)
        enu = geodetic_to_enu(p["lat"], p["lon"], p["alt"], origin_of(conf))
        assert np.abs(enu - centre).max() < 0.01
        from pyproj import Transformer

        zone = str(p["zone"][0])
        assert set(p["zone"].tolist()) == {zone} == {"18N"}
        tr = Transformer.from_crs("EPSG:4326", f"EPSG:326{zone[:-1]}", always_xy=True)
        e, n = tr.transform(p["lon"], p["lat"])
        assert np.abs(e - p["utm_e"]).max() < 1e-3 and np.abs(n - p["utm_n"]).max() < 1e-3


def _inside_any(xy: np.ndarray, streets, ext: float) -> np.ndarray:
    """Inside the band of one of ``streets`` (facade line to facade line), prolonged by ``ext`` at both ends into
    the intersections (segments end at the intersections' edges)."""
    ok = np.zeros(len(xy), bool)
    for st in streets:
        a, b = np.asarray(st.start), np.asarray(st.end)
        length = np.linalg.norm(b - a)
        u = (b - a) / length
        rel = xy - a
        along, across = rel @ u, rel @ np.array([-u[1], u[0]])
        ok |= (along >= -ext) & (along <= length + ext) & (np.abs(across) <= st.width_m / 2)
    return ok


def test_positions_on_streets_of_the_split(drive_run, city) -> None:
    _, files = drive_run
    streets = city.streets_of(SPLIT)
    ids = {s.id for s in streets}
    for tf in files.traversals:
        p = read_poses_csv(tf.poses_csv)
        assert set(p["street_id"].tolist()) <= ids
        assert _inside_any(np.stack([p["x"], p["y"]], 1), streets, max(s.width_m for s in city.streets)).all()


def test_speed_and_acceleration_bounds_and_stops(drive_run) -> None:
    conf, files = drive_run
    v, dt = conf.vehicle, 1.0 / conf.pose_hz
    for tc, tf in zip(conf.traversals, files.traversals, strict=True):
        p = read_poses_csv(tf.poses_csv)
        assert p["speed"].max() <= v.max_speed_mps * tc.speed_scale + 1e-4
        assert p["accel"].max() <= v.max_accel_mps2 + 1e-4 and p["accel"].min() >= -v.max_decel_mps2 - 1e-4
        assert np.abs(np.diff(p["accel"]) / dt).max() <= v.max_jerk_mps3 + 1e-2
        step = np.linalg.norm(np.diff(np.stack([p["x"], p["y"]], 1), axis=0), axis=1) / dt
        assert step.max() <= v.max_speed_mps * tc.speed_scale * 1.5  # the camera moves no faster (turns aside)
        moving = p["speed"] > 1e-3
        rest = np.flatnonzero(~moving[1:] & moving[:-1])  # comes to rest...
        assert any(moving[i + 1:].any() for i in rest)  # ...and drives on: a stop mid-route
    stops = [t["stops"] for t in yaml.safe_load(files.route.read_text())["traversals"]]
    assert all(len(s) >= 1 for s in stops)


def test_traversals_share_the_route_but_differ(drive_run) -> None:
    conf, files = drive_run
    a, b = (read_poses_csv(tf.poses_csv) for tf in files.traversals)

    def order(ids: np.ndarray) -> list[int]:
        return [int(x) for i, x in enumerate(ids) if i == 0 or x != ids[i - 1]]

    assert order(a["street_id"]) == order(b["street_id"])
    route = yaml.safe_load(files.route.read_text())
    assert order(a["street_id"]) == route["street_ids"]
    offset = conf.traversals[1].lateral_offset_m - conf.traversals[0].lateral_offset_m
    assert np.median(b["lateral_m"]) - np.median(a["lateral_m"]) == pytest.approx(offset, abs=1e-6)
    conds = [t["condition"] for t in route["traversals"]]
    assert conds[0] == "day" and conds[0] != conds[1]
    ia = files.traversals[0].frames[len(files.traversals[0].frames) // 2][1]
    ib = files.traversals[1].frames[len(files.traversals[1].frames) // 2][1]
    assert (files.root / ia).read_bytes() != (files.root / ib).read_bytes()


def test_frames_show_no_place_of_another_split(drive_run, city) -> None:
    conf, files = drive_run
    K = intrinsics(conf.focal, conf.width, conf.height)
    for tf in files.traversals:
        poses = read_poses(tf.poses)
        for name in list(poses)[::3]:
            frame = render(city, K, poses[name], size=(conf.width, conf.height))
            assert foreign_fraction(frame.place_id, city, SPLIT) == 0


def test_interrupted_run_resumes_identically(drive_run, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conf, files = drive_run
    real = ItemWriter.write_image
    count = {"n": 0}

    def dies_after_five(self, name, image, **kw):  # noqa: ANN001, ANN202
        if count["n"] == 5:
            raise KeyboardInterrupt
        count["n"] += 1
        return real(self, name, image, **kw)

    monkeypatch.setattr(ItemWriter, "write_image", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        generate_drive(conf, tmp_path, split=SPLIT, progress=False)
    assert not (tmp_path / "world.yaml").exists() and not (tmp_path / "route.yaml").exists()
    assert not list(tmp_path.rglob("poses.csv"))
    monkeypatch.setattr(ItemWriter, "write_image", real)
    again = generate_drive(conf, tmp_path, split=SPLIT, progress=False)
    assert again.summary.already_done == 5
    assert _files(tmp_path) == _files(files.root)  # byte for byte: the same seed makes the same dataset


@pytest.mark.slow
def test_another_seed_makes_another_drive(drive_run, tmp_path: Path) -> None:
    conf, files = drive_run
    other = generate_drive(dataclasses.replace(conf, city=dataclasses.replace(conf.city, seed=4), render_hz=1,
                                               traversals=conf.traversals[:1]), tmp_path, split=SPLIT, progress=False)
    assert other.traversals[0].poses_csv.read_bytes() != files.traversals[0].poses_csv.read_bytes()


def test_frame_budget_fails_at_once_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfError, match=r"^DriveConf\.render_hz: would write \d+ frames, more than max_frames = 5"):
        generate_drive(small_conf(max_frames=5), tmp_path / "a", split=SPLIT, progress=False)
    with pytest.raises(ConfError, match=r"^DriveConf\.pose_hz: would write \d+ poses, more than max_poses = 50"):
        generate_drive(small_conf(max_poses=50), tmp_path / "b", split=SPLIT, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_conf_checks_name_the_field() -> None:
    for changes, field in (({"pose_hz": 2000}, "pose_hz"), ({"render_hz": 7}, "render_hz"),
                           ({"width": 16}, "width"), ({"origin_lat_deg": 85.0}, "origin_lat_deg"),
                           ({"traversals": ()}, "traversals"),
                           ({"traversals": (TraversalConf("a"), TraversalConf("a"))}, r"traversals\[1\]\.name"),
                           ({"traversals": (TraversalConf("a", "noon"),)}, r"traversals\[0\]\.condition")):
        with pytest.raises(ConfError, match=rf"^DriveConf\.{field}:"):
            small_conf(**changes)


def test_registered_and_overridable() -> None:
    conf = generator_conf("drive", seed=7, overrides=["pose_hz=500", "traversals=[{name: q, condition: dusk}]"])
    assert isinstance(conf, DriveConf) and conf.city.seed == 7 and conf.pose_hz == 500
    assert conf.traversals == (TraversalConf("q", "dusk"),)
