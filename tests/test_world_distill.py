"""The ``distill`` world generator: deterministic per seed, clean splits, resumable, bad confs fail at once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import visloc.data.world as world
import visloc.data.world.distill as distill
from visloc.cli import app
from visloc.conf import ConfError, apply_overrides
from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import foreign_fraction
from visloc.data.scene.render import intrinsics, render
from visloc.data.world.base import PENDING, RECORD
from visloc.data.world.distill import DistillConf, generate_distill, read_views
from visloc.io.images import read_image

#: a small city (2 x 3 blocks) and tiny images: a view renders in milliseconds
SMALL = CityConf(num_streets_x=3, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, px_per_m=12.0,
                 ground_px_per_m=6.0, split=(0.34, 0.33, 0.33), extra_photos=False)
TINY = DistillConf(city=SMALL, num_views=6, width=64, height=48, focal=50.0, image_format="png")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_distill(TINY, tmp_path / "a", split="train", progress=False)
    generate_distill(TINY, tmp_path / "b", split="train", progress=False)
    assert a.images == tuple(f"images/{i:06d}.png" for i in range(6)) and a.summary.done == 6
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert sorted(_files(tmp_path / "a")) == [*a.images, "views.csv", "world.yaml"]  # row chunks are gone
    assert read_image(tmp_path / "a" / a.images[0]).shape == (48, 64, 3)
    record = yaml.safe_load(a.record.read_text())
    assert (record["kind"], record["split"], record["items"]) == ("distill", "train", 6)
    assert np.allclose(record["camera"]["K"], intrinsics(50.0, 64, 48))
    other = generate_distill(replace(TINY, city=replace(SMALL, seed=1)), tmp_path / "c", split="train",
                             progress=False)
    assert (tmp_path / "c" / other.images[0]).read_bytes() != (tmp_path / "a" / a.images[0]).read_bytes()
    again = generate_distill(TINY, tmp_path / "a", split="train", progress=False)  # finished: returns at once
    assert (again.summary.done, again.summary.already_done) == (0, 0) and again.images == a.images


@pytest.mark.parametrize("split", ["train", "test"])
def test_views_show_only_their_split_and_rows_give_the_pose(tmp_path: Path, split: str) -> None:
    files = generate_distill(replace(TINY, num_views=8), tmp_path, split=split, progress=False)
    views = read_views(files.views)
    assert [v.name for v in views] == list(files.images)
    cities = {s: build_city(SMALL, s) for s in ("summer", "autumn", "winter")}
    K = intrinsics(50.0, 64, 48)
    for v in views:
        season = next((s for s in ("autumn", "winter") if s in v.condition), "summer")
        city = cities[season]
        assert city.streets[v.street_id].split == split
        frame = render(city, K, v.pose, size=(64, 48))
        assert foreign_fraction(frame.place_id, city, split) == 0.0  # no place of another split in view
        assert np.mean(frame.place_id < 0) <= TINY.max_sky
        assert v.condition == distill.condition_name(distill.parse_condition(v.condition))


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distill, "CHUNK", 2)
    full = generate_distill(TINY, tmp_path / "full", split="val", progress=False)
    original = distill.render_view

    def killed(conf: DistillConf, split: str, index: int):  # the process dies while rendering view 3
        if index == 3:
            raise KeyboardInterrupt
        return original(conf, split, index)  # pyright: ignore[reportArgumentType]

    monkeypatch.setattr(distill, "render_view", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_distill(TINY, tmp_path / "part", split="val", progress=False)
    part = tmp_path / "part"
    assert (part / PENDING).is_file() and not (part / RECORD).exists() and not (part / "views.csv").exists()
    assert sorted(p.name for p in (part / "images").iterdir()) == [f"{i:06d}.png" for i in range(3)]
    monkeypatch.setattr(distill, "render_view", original)
    resumed = generate_distill(TINY, part, split="val", progress=False)
    # views 0-1: their chunk is done; view 2: image kept, its row rendered again; views 3-5 new
    assert (resumed.summary.done, resumed.summary.already_done) == (3, 3)
    assert _files(part) == _files(tmp_path / "full") and resumed.images == full.images


def test_registered_and_reached_by_the_cli(tmp_path: Path) -> None:
    assert world.GENERATORS["distill"].function == "generate_distill"
    conf = world.generator_conf("distill", 5, ["num_views=7", "image_format=png"])
    assert isinstance(conf, DistillConf) and (conf.city.seed, conf.num_views, conf.image_format) == (5, 7, "png")
    small = [f"city.{k}={v}" for k, v in (("num_streets_x", 3), ("num_streets_y", 4), ("block_length_m", 40.0),
                                          ("block_depth_m", 30.0), ("px_per_m", 12.0), ("split", "[0.34,0.33,0.33]"))]
    args = ["data", "world", "distill", "--seed", "2", "--split", "test", "--out", str(tmp_path), "--quiet",
            *(x for s in [*small, "num_views=2", "width=64", "height=48", "focal=50"] for x in ("--set", s))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "world distill (test): 2 new, 0 already done, 0 skipped" in result.output
    record = yaml.safe_load((tmp_path / RECORD).read_text())
    assert (record["seed"], record["split"], record["conf"]["width"]) == (2, "test", 64)


@pytest.mark.parametrize(("override", "message"), [
    ({"num_views": 0}, r"^DistillConf.num_views: must be >= 1, got 0$"),
    ({"num_views": 11, "max_views": 10}, r"^DistillConf.num_views: would write 11 frames, more than max_frames = 10$"),
    ({"width": 16}, r"^DistillConf.width: width and height must be >= 32 px, got \(16, 480\)$"),
    ({"focal": 0.0}, r"^DistillConf.focal: must be positive"),
    ({"times": ["day", "noon"]}, r"^DistillConf.times: unknown condition preset 'noon'"),
    ({"time_weights": [1.0, 0.0]}, r"^DistillConf.time_weights: needs 3 non-negative weights"),
    ({"seasons": []}, r"^DistillConf.seasons: must name at least one choice"),
    ({"extras": ["fog"], "extra_probs": [0.5]}, r"^DistillConf.extras: a draw would be invalid: .*both set"),
    ({"extra_probs": [0.1]}, r"^DistillConf.extra_probs: needs 2 probabilities in \[0, 1\]"),
    ({"max_foreign": 1.0}, r"^DistillConf.max_foreign: must be in \[0, 1\)"),
    ({"max_tries": 0}, r"^DistillConf.max_tries: must be >= 1"),
    ({"jpeg_quality": 0}, r"^DistillConf.jpeg_quality: must be in 1..100"),
    ({"image_format": "bmp"}, r"image_format"),
])
def test_bad_conf_fails_at_once_naming_the_field(override: dict, message: str) -> None:
    with pytest.raises(ConfError, match=message):
        apply_overrides(DistillConf(), override)


def test_a_view_given_up_is_reported_and_the_job_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distill, "render_clean", lambda *a, **k: None)  # every pose shows another split
    files = generate_distill(replace(TINY, num_views=2, max_tries=3), tmp_path, split="train", progress=False)
    assert files.images == () and files.summary.done == 0
    assert files.summary.failed == [(f"images/{i:06d}.png", "no view of train places alone (sky <= max_sky) in 3 tries")
                                     for i in range(2)]


def test_read_views_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "views.csv"
    path.write_text(",".join(distill.COLUMNS) + "\nimages/0.jpg,1,0,0,0,0,0,0,day,3\nimages/1.jpg,1,0,x\n")
    with pytest.raises(ValueError, match=r"views.csv:3: malformed row"):
        read_views(path)
    path.write_text("name,pose\n")
    with pytest.raises(ValueError, match="expected the header"):
        read_views(path)


def test_a_plane_whose_box_is_one_pixel_renders() -> None:
    """Found by the distill run: a plane just off the image corner gave a 1 x 1 box that cv2.compare refused."""
    from types import SimpleNamespace

    from visloc.data.scene.world import make_plane
    from visloc.io.poses import CameraPose

    K = intrinsics(50.0, 32, 32)
    corner = 10.0 * (-0.95 - 15.5) / 50  # pixel (-0.95, -0.95) at 10 m: inside the renderer's 1 px margin
    plane = make_plane("dot", (corner, corner, 10.0), (1, 0, 0), (0, 1, 0), (0.04, 0.04),
                       np.full((4, 4, 3), 255, np.uint8), 0)
    world_ = SimpleNamespace(conf=SimpleNamespace(near_m=0.05, far_m=100.0, width=32, height=32), planes=(plane,))
    frame = render(world_, K, CameraPose(np.eye(3), np.zeros(3)), size=(32, 32))  # pyright: ignore[reportArgumentType]
    assert not (frame.plane_index >= 0).any()  # off the image: nothing drawn, and no crash
