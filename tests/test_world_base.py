"""The world generators' shared plumbing: job records, resume, refusal of another job, atomic items, CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import visloc.data.world as world
from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.world.base import (
    PENDING,
    RECORD,
    ItemWriter,
    WorldJob,
    check_frame_budget,
    check_split,
    encode_image,
    finish,
    job_rng,
    start,
)
from visloc.errors import InputError, UnknownNameError


@dataclass(frozen=True)
class _City:
    seed: int = 0


@dataclass(frozen=True)
class TinyConf:
    """A generator conf of the shape every kind has: a ``city`` with the seed, and its own fields."""

    city: _City = field(default_factory=_City)
    count: int = 3


@dataclass(frozen=True)
class TinyFiles:
    root: Path
    summary: object


def generate_tiny(conf: TinyConf, out: Path, *, split: str, progress: bool = True) -> TinyFiles:
    """Writes ``count`` PNGs whose pixels come from the job rng of each item; resumable."""
    job = WorldJob("tiny", check_split(split), conf.city.seed, conf, out)
    writer = ItemWriter(out)
    if start(job):
        return TinyFiles(out, writer.summary)
    for i in range(conf.count):
        name = f"img/{i:03d}.png"
        if writer.has(name):
            continue
        rng = job_rng(conf.city.seed, "tiny", split, i)
        writer.write_image(name, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    finish(job, writer.summary)
    return TinyFiles(out, writer.summary)


@pytest.fixture
def tiny_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(world.GENERATORS, "tiny", world.GeneratorEntry(__name__, "TinyConf", "generate_tiny", "test"))


def test_job_rng_is_stable_and_separates_kinds_splits_and_items() -> None:
    a = job_rng(3, "pairs", "train", 5).integers(0, 2**31, 4)
    assert np.array_equal(a, job_rng(3, "pairs", "train", 5).integers(0, 2**31, 4))
    for other in (job_rng(3, "pairs", "test", 5), job_rng(3, "drive", "train", 5), job_rng(3, "pairs", "train", 6),
                  job_rng(4, "pairs", "train", 5)):
        assert not np.array_equal(a, other.integers(0, 2**31, 4))


def test_checks_name_the_field() -> None:
    with pytest.raises(ConfError, match=r"^split: must be one of \['train', 'val', 'test'\], got 'dev'$"):
        check_split("dev")
    check_frame_budget(10, 10, "DriveConf.rate_hz")
    with pytest.raises(ConfError, match=r"^DriveConf.rate_hz: would write 11 frames, more than max_frames = 10$"):
        check_frame_budget(11, 10, "DriveConf.rate_hz")


def test_encode_image_png_is_lossless_and_jpg_close(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    png = cv2.imdecode(np.frombuffer(encode_image("a.png", rgb), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(png, rgb)
    flat = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    jpg = cv2.imdecode(np.frombuffer(encode_image("a.jpg", flat), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.abs(jpg.astype(int) - flat).max() <= 3
    with pytest.raises(ValueError, match="written as .png or .jpg"):
        encode_image("a.bmp", rgb)


def test_item_writer_refuses_names_outside_root(tmp_path: Path) -> None:
    writer = ItemWriter(tmp_path)
    for bad in ("../x.png", "/abs.png", "a/../../x.png"):
        with pytest.raises(ValueError, match="must be relative"):
            writer.path(bad)


def test_generator_resumes_after_a_kill_and_gives_the_same_bytes(tmp_path: Path, tiny_kind: None) -> None:
    full = world.run_generator("tiny", tmp_path / "full", split="train", seed=1, overrides=["count=4"])
    assert (full.summary.done, full.summary.already_done) == (4, 0)
    # an interrupted run: two items written, no completion record
    part = tmp_path / "part"
    conf = world.generator_conf("tiny", 1, ["count=4"])
    job = WorldJob("tiny", "train", 1, conf, part)
    start(job)
    writer = ItemWriter(part)
    for i in (0, 2):
        writer.write_image(f"img/{i:03d}.png", job_rng(1, "tiny", "train", i).integers(0, 256, (8, 8, 3),
                                                                                          dtype=np.uint8))
    assert (part / PENDING).is_file() and not (part / RECORD).exists()
    resumed = world.run_generator("tiny", part, split="train", seed=1, overrides=["count=4"])
    assert (resumed.summary.done, resumed.summary.already_done) == (2, 2)
    assert not (part / PENDING).exists()
    for i in range(4):
        assert (part / f"img/{i:03d}.png").read_bytes() == (tmp_path / "full" / f"img/{i:03d}.png").read_bytes()
    record = yaml.safe_load((part / RECORD).read_text())
    assert record["kind"] == "tiny" and record["seed"] == 1 and record["conf"]["count"] == 4
    assert record["items"] == 4
    again = world.run_generator("tiny", part, split="train", seed=1, overrides=["count=4"])
    assert (again.summary.done, again.summary.already_done) == (0, 0)  # finished: returns at once


def test_another_job_in_the_same_folder_is_refused_naming_the_field(tmp_path: Path, tiny_kind: None) -> None:
    world.run_generator("tiny", tmp_path, split="train", seed=1)
    with pytest.raises(InputError, match=r"holds another world job \(conf.count differs"):
        world.run_generator("tiny", tmp_path, split="train", seed=1, overrides=["count=5"])
    with pytest.raises(InputError, match=r"\(conf.city.seed differs"):
        world.run_generator("tiny", tmp_path, split="train", seed=2)
    with pytest.raises(InputError, match=r"\(split differs"):
        world.run_generator("tiny", tmp_path, split="test", seed=1)


def test_unknown_kind_and_override_errors() -> None:
    with pytest.raises(UnknownNameError, match="unknown world kind 'nope'; known: "):
        world.get_generator("nope")


def test_cli_passes_kind_seed_split_out_and_overrides(tmp_path: Path, tiny_kind: None) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "world", "tiny", "--seed", "7", "--split", "val", "--out", str(tmp_path),
                                 "--set", "count=2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "world tiny (val): 2 new, 0 already done, 0 skipped" in result.output
    record = yaml.safe_load((tmp_path / RECORD).read_text())
    assert (record["seed"], record["split"], record["conf"]["count"]) == (7, "val", 2)
    by_set = runner.invoke(app, ["data", "world", "tiny", "--out", str(tmp_path / "s"), "--set", "city.seed=5",
                                 "--quiet"])
    assert by_set.exit_code == 0, by_set.output
    assert yaml.safe_load((tmp_path / "s" / RECORD).read_text())["seed"] == 5  # --seed unset: --set's seed stands
    bad = runner.invoke(app, ["data", "world", "tiny", "--split", "dev", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "split: must be one of" in bad.output
    unknown = runner.invoke(app, ["data", "world", "nope", "--out", str(tmp_path / "c")])
    assert unknown.exit_code == 2 and "unknown world kind 'nope'" in unknown.output


def test_cli_help_lists_every_registered_kind() -> None:
    from visloc.cli_train import WORLD_KINDS

    assert sorted(k.strip() for k in WORLD_KINDS.split(",")) == world.generator_names()
