"""World drive -> events: the exact-flow step, the adaptive rate, the event-drive kind, its reader, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.world import run_generator
from visloc.errors import InputError
from visloc.events.drive_dataset import PlaceWindows, read_event_drive
from visloc.events.io.h5 import VislocEvents
from visloc.events.world_drive import WorldEventsConf, WorldEventSource, max_displacement, read_traversal
from visloc.io.poses import CameraPose

runner = CliRunner()
TINY = ["width=64", "height=48", "focal=50", "route_length_m=20", "workers=2",
        "traversals=[{name: day1, condition: day}, {name: night1, condition: night, lateral_offset_m: 0.3}]"]


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("event-drive") / "ed"
    run_generator("event-drive", out, split="train", overrides=TINY, progress=False)
    return out


def test_max_displacement_is_exact_for_a_plane_and_a_sideways_step() -> None:
    # a fronto-parallel wall 5 m away; the camera moves 10 cm along its x: every pixel moves f * 0.1 / 5
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])
    depth = np.full((48, 64), 5.0, np.float32)
    pose0 = CameraPose(np.eye(3), np.zeros(3))
    pose1 = CameraPose(np.eye(3), np.array([-0.1, 0.0, 0.0]))  # centre at x = +0.1
    assert max_displacement(depth, K, pose0, pose1, 4) == pytest.approx(2.0, abs=1e-9)
    depth[:24] = np.inf  # the sky does not move with a translation; the wall half still does
    assert max_displacement(depth, K, pose0, pose1, 1) == pytest.approx(2.0, abs=1e-9)
    assert max_displacement(np.full((48, 64), np.inf, np.float32), K, pose0, pose1, 1) == 0.0


def test_pose_at_interpolates_between_the_samples(tiny_drive: Path) -> None:
    tr = read_traversal(tiny_drive, "day1")
    j = len(tr.t_us) // 2
    for i in (j, j + 1):
        assert np.allclose(tr.pose_at(int(tr.t_us[i])).R, tr.R[i]) and np.allclose(tr.pose_at(int(tr.t_us[i])).t,
                                                                                   tr.pose(i).t)
    mid = tr.pose_at(int(tr.t_us[j] + tr.t_us[j + 1]) // 2)
    centre = -mid.R.T @ mid.t
    assert np.allclose(centre, (tr.centre[j] + tr.centre[j + 1]) / 2, atol=1e-9)
    from scipy.spatial.transform import Rotation
    half = (Rotation.from_matrix(tr.R[j]).inv() * Rotation.from_matrix(mid.R)).magnitude()
    full = (Rotation.from_matrix(tr.R[j]).inv() * Rotation.from_matrix(tr.R[j + 1])).magnitude()
    assert half == pytest.approx(full / 2, rel=1e-6, abs=1e-12)
    assert np.allclose(tr.pose_at(-5).R, tr.R[0]) and np.allclose(tr.pose_at(10**12).R, tr.R[-1])  # clamped


def test_world_events_conf_ranges() -> None:
    for bad in ({"max_flow_px": 0}, {"min_rate_hz": 0}, {"flow_stride_px": 0}):
        with pytest.raises(ConfError, match=f"WorldEventsConf.{next(iter(bad))}"):
            WorldEventsConf(**bad)


def test_the_event_drive_records_what_it_wrote_and_keeps_motion_under_the_budget(tiny_drive: Path) -> None:
    record = yaml.safe_load((tiny_drive / "events.yaml").read_text())
    assert record["events"]["max_flow_px"] == 1.0 and record["sensor_size"] == [64, 48]
    rows = {r["name"]: r for r in record["traversals"]}
    assert set(rows) == {"day1", "night1"}
    for name, row in rows.items():
        f = VislocEvents(tiny_drive / name / "events.h5")
        try:
            assert len(f) == row["events"] > 10_000 and f.sensor_size == (64, 48) and f.origin_us == 0
            ev = f.read_all()
        finally:
            f.close()
        poses_end = read_traversal(tiny_drive, name).t_us[-1]
        assert np.all(np.diff(ev.t) >= 0) and 0 <= ev.t[0] and ev.t[-1] <= poses_end
        assert set(np.unique(ev.p).tolist()) == {-1, 1}
        assert row["max_flow_px_seen"] <= 1.0 and row["pairs_over_max_flow"] == 0
    # a re-run resumes: nothing is simulated again (the stored records match)
    mtime = (tiny_drive / "day1" / "events.h5").stat().st_mtime_ns
    run_generator("event-drive", tiny_drive, split="train", overrides=TINY, progress=False)
    assert (tiny_drive / "day1" / "events.h5").stat().st_mtime_ns == mtime


def test_the_rate_follows_the_motion_and_the_simulation_repeats(tiny_drive: Path) -> None:
    tr = read_traversal(tiny_drive, "day1")
    moving = int(np.argmax(np.linalg.norm(np.diff(tr.centre, axis=0), axis=1)))  # at top speed
    start = max(0, min(moving, len(tr.t_us) - 201))

    def run(conf: WorldEventsConf) -> tuple[int, np.ndarray]:
        src = WorldEventSource(tr, conf)
        chunks = list(src.chunks(start, start + 200))
        return src.stats.frames, np.concatenate([c.t for c in chunks])

    frames_1px, t1 = run(WorldEventsConf(max_flow_px=1.0))
    frames_half, _ = run(WorldEventsConf(max_flow_px=0.5))
    assert frames_half > 1.6 * frames_1px  # half the motion per frame: about twice the frames
    again = run(WorldEventsConf(max_flow_px=1.0))[1]
    assert np.array_equal(t1, again)  # deterministic per seed
    # a still vehicle: one frame per 1 / min_rate_hz
    still = type(tr)(**{**tr.__dict__, "centre": np.repeat(tr.centre[:1], len(tr.t_us), 0),
                        "R": np.repeat(tr.R[:1], len(tr.t_us), 0)})
    src = WorldEventSource(still, WorldEventsConf(min_rate_hz=20.0))
    list(src.chunks(0, 1001))
    assert src.stats.frames == 21  # poses 0, 50, ..., 1000


def test_places_and_windows_of_the_event_drive(tiny_drive: Path) -> None:
    drive = read_event_drive(tiny_drive)
    assert drive.split == "train" and drive.sensor_size == (64, 48) and set(drive.traversals) == {"day1", "night1"}
    tr = drive["day1"]
    places = tr.places(PlaceWindows(stride_m=5.0, kind="count", count=2000))
    steps = np.linalg.norm(np.diff(places.xy, axis=0), axis=1)
    assert len(places) > 10 and np.allclose(steps[steps > 0.5], 5.0, atol=0.05)  # every 5 m of travel
    ev = tr.read(places, 3)
    assert len(ev) == 2000 and int(ev.t[-1]) < places.t_us[3]
    dur = tr.places(PlaceWindows(stride_m=5.0, kind="duration", duration_us=20_000))
    ev = tr.read(dur, 3)
    assert int(dur.t_us[3]) - 20_000 <= int(ev.t[0]) and int(ev.t[-1]) < int(dur.t_us[3])
    with pytest.raises(InputError, match="no traversal 'dusk'"):
        drive["dusk"]


def test_simulate_world_drive_cli(tiny_drive: Path, tmp_path: Path) -> None:
    out = tmp_path / "day1.h5"
    result = invoke("events", "simulate", "--world-drive", tiny_drive, "--traversal", "day1", "--out", out,
                    "--set", "max_flow_px=1.0", "--quiet")
    assert result.exit_code == 0, result.output
    assert "events simulate: day1 (day" in result.output and "frames rendered" in result.output
    a, b = VislocEvents(out), VislocEvents(tiny_drive / "day1" / "events.h5")
    try:
        assert np.array_equal(a.read_all().t, b.read_all().t)  # the generator and the command agree
    finally:
        a.close()
        b.close()
    again = invoke("events", "simulate", "--world-drive", tiny_drive, "--traversal", "day1", "--out", out,
                   "--max-flow-px", "1.0", "--quiet")
    assert again.exit_code == 0 and "already done" in again.output
    other = invoke("events", "simulate", "--world-drive", tiny_drive, "--traversal", "day1", "--out", out,
                   "--set", "esim.contrast_pos=0.3", "--quiet")
    assert other.exit_code == 2 and "made with another conf" in other.output
    need = invoke("events", "simulate", "--world-drive", tiny_drive, "--out", out, "--quiet")
    assert need.exit_code == 2 and "--traversal is needed, the drive has day1, night1" in need.output
    mixed = invoke("events", "simulate", "--world-drive", tiny_drive, "--video", "v.avi", "--out", out)
    assert mixed.exit_code == 2 and "leave out --video" in mixed.output
    missing = invoke("events", "simulate", "--world-drive", tmp_path / "nope", "--traversal", "a", "--out", out)
    assert missing.exit_code == 2 and "world.yaml: file not found" in missing.output


def test_a_drive_without_events_is_refused_by_the_reader(tmp_path: Path) -> None:
    out = tmp_path / "drive"
    run_generator("drive", out, split="train", overrides=[*TINY[:4], "traversals=[{name: a, condition: day}]"],
                  progress=False)
    with pytest.raises(InputError, match="no traversal has an events.h5"):
        read_event_drive(out)
