"""``visloc events simulate``: frame folders and videos end to end, the file it writes, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.errors import InputError
from visloc.events.frame_sources import folder_frames, mean_flow_px, read_timestamps, video_frames
from visloc.events.io.dispatch import detect_format
from visloc.events.io.h5 import EventWriter, VislocEvents
from visloc.events.simulator import EsimConf, simulate_frames
from visloc.events.stream import EventStream

runner = CliRunner()


def read_events_h5(path: Path) -> tuple[EventStream, dict[str, str]]:
    """The whole stream and the extra attributes of a visloc event file."""
    f = VislocEvents(path)
    try:
        return f.read_all(), f.attrs
    finally:
        f.close()


def simulate_events_cli_record(path: Path) -> str | None:
    from visloc.pipelines.simulate_events import stored_record

    return stored_record(path)
QUIET = ("--set", "shot_noise_rate_hz=0", "--set", "leak_rate_hz=0")


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _scene(n: int, shift_px: float, size: tuple[int, int] = (48, 36)) -> list[np.ndarray]:
    """``n`` uint8 frames of a smooth random texture translated ``shift_px`` per frame (subpixel, by warpAffine)."""
    w, h = size
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.random((h + 20, w + 20)).astype(np.float32), (0, 0), 2.0)
    base = (base - base.min()) / (base.max() - base.min())
    out = []
    for i in range(n):
        m = np.float32([[1, 0, -10 - i * shift_px], [0, 1, -10]])
        img = cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR)
        out.append(np.clip(np.rint(img * 230 + 10), 0, 255).astype(np.uint8))
    return out


def _folder(tmp_path: Path, frames: list[np.ndarray], times: list[str]) -> tuple[Path, Path]:
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(d / f"{i:04d}.png"), f)
    ts = tmp_path / "timestamps.txt"
    ts.write_text("\n".join(times) + "\n")
    return d, ts


def _video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_a_frame_folder_end_to_end_matches_the_api(tmp_path):
    frames = _scene(12, 0.3)
    times = [f"{1.5 + i * 0.004:.6f}" for i in range(12)]  # seconds, 250 fps, an origin of 1.5 s
    d, ts = _folder(tmp_path, frames, times)
    out = tmp_path / "ev.h5"
    result = invoke("events", "simulate", "--frames", d, "--timestamps", ts, "--out", out, *QUIET,
                    "--set", "contrast_pos=0.15", "--set", "seed=3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "events simulate: 12 frames (48x36, 0.044 s)" in result.output and "warning" not in result.output
    events, attrs = read_events_h5(out)
    assert set(attrs) == {"visloc_simulator"} and detect_format(out) == "visloc-h5"
    assert events.sensor_size == (48, 36) and events.origin_us == 1_500_000 and len(events) > 50
    conf = EsimConf(shot_noise_rate_hz=0.0, leak_rate_hz=0.0, contrast_pos=0.15, seed=3)
    api = list(simulate_frames([f.astype(np.float32) / 255 for f in frames],
                               [1_500_000 + 4000 * i for i in range(12)], conf))
    assert np.array_equal(events.t, np.concatenate([c.t for c in api]))
    assert np.array_equal(events.x, np.concatenate([c.x for c in api]))
    assert np.array_equal(events.p, np.concatenate([c.p for c in api]))
    with h5py.File(out) as f:
        ds = {k: f[f"events/{k}"] for k in "txyp"}
        assert {k: d.dtype for k, d in ds.items()} == {"t": np.int64, "x": np.uint16, "y": np.uint16, "p": np.int8}
        assert ds["t"].chunks is not None and ds["t"].compression == "gzip"
    # a re-run with the same conf and input skips; another conf needs --overwrite
    again = invoke("events", "simulate", "--frames", d, "--timestamps", ts, "--out", out, *QUIET,
                   "--set", "contrast_pos=0.15", "--set", "seed=3", "--quiet")
    assert again.exit_code == 0 and "already done" in again.output
    other = invoke("events", "simulate", "--frames", d, "--timestamps", ts, "--out", out, *QUIET, "--quiet")
    assert other.exit_code == 2 and "--overwrite" in other.output
    assert invoke("events", "simulate", "--frames", d, "--timestamps", ts, "--out", out, "--quiet",
                  "--overwrite").exit_code == 0
    assert read_events_h5(out)[0].origin_us == 1_500_000 and not list(tmp_path.glob(".ev.h5.*"))


def test_timestamps_in_microseconds_and_a_size(tmp_path):
    frames = _scene(6, 0.3, (64, 48))
    d, ts = _folder(tmp_path, frames, [str(1000 + 5000 * i) for i in range(6)])
    out = tmp_path / "ev.h5"
    result = invoke("events", "simulate", "--frames", d, "--timestamps", ts, "--timestamps-unit", "us",
                    "--size", "32x24", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    events, _ = read_events_h5(out)
    assert events.sensor_size == (32, 24) and events.origin_us == 1000 and int(events.t.max()) <= 25_000


def test_a_video_end_to_end_with_the_motion_warning(tmp_path):
    slow = _video(tmp_path / "slow.avi", _scene(10, 0.2))
    result = invoke("events", "simulate", "--video", slow, "--out", tmp_path / "slow.h5", "--quiet")
    assert result.exit_code == 0, result.output
    assert "10 frames (48x36, 0.360 s)" in result.output and "warning" not in result.output
    events, _ = read_events_h5(tmp_path / "slow.h5")
    assert len(events) > 0 and int(events.t.max()) <= 360_000 and events.origin_us == 0

    fast = _video(tmp_path / "fast.avi", _scene(10, 3.0))
    result = invoke("events", "simulate", "--video", fast, "--out", tmp_path / "fast.h5", "--quiet",
                    "--video-timing", "pos_msec")
    assert result.exit_code == 0, result.output
    assert "upsample the frames (e.g. frame interpolation) for faithful events" in result.output
    assert read_events_h5(tmp_path / "fast.h5")[0].duration_us <= 360_000

    result = invoke("events", "simulate", "--video", fast, "--out", tmp_path / "fps.h5", "--fps", "100", "--quiet",
                    "--max-flow-px", "5")
    assert result.exit_code == 0 and "0.090 s" in result.output and "warning" not in result.output


def test_the_motion_check_measures_pixels():
    frames = _scene(2, 2.0, (160, 120))
    assert mean_flow_px(frames[0], frames[1]) == pytest.approx(2.0, abs=0.3)
    big = [cv2.resize(f, (640, 480), interpolation=cv2.INTER_LINEAR) for f in frames]  # 8 px at full resolution
    assert mean_flow_px(big[0], big[1]) == pytest.approx(8.0, rel=0.15)
    assert mean_flow_px(frames[0], frames[0]) < 0.01


def _error(*args: object) -> str:
    result = invoke("events", "simulate", *args, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_inputs_give_one_line(tmp_path):
    frames = _scene(4, 0.3)
    d, ts = _folder(tmp_path, frames, ["0.0", "0.01", "0.01", "0.03"])
    out = tmp_path / "ev.h5"
    message = _error("--frames", d, "--timestamps", ts, "--out", out)
    assert "line 3" in message and "not after" in message
    ts.write_text("0\n0.01\n0.02\n")
    assert "4 images but" in _error("--frames", d, "--timestamps", ts, "--out", out)
    ts.write_text("0\n1.5\n2\n3\n")
    assert "integer of µs" in _error("--frames", d, "--timestamps", ts, "--timestamps-unit", "us", "--out", out)
    ts.write_text("0\n0.1\nnan\n0.3\n")
    assert "line 3" in _error("--frames", d, "--timestamps", ts, "--out", out)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 100)
    assert _error("--video", bad, "--out", out) == f"error: {bad}: cannot decode as a video (OpenCV read no frame)"
    assert _error("--video", tmp_path / "none.avi", "--out", out) == \
        f"error: {tmp_path / 'none.avi'}: video file not found"
    assert "exactly one" in _error("--frames", d, "--video", bad, "--out", out)
    assert "exactly one" in _error("--out", out)
    assert "needs --timestamps" in _error("--frames", d, "--out", out)
    assert "unknown key" in _error("--frames", d, "--timestamps", ts, "--out", out, "--set", "contrast=0.1")
    assert "contrast_pos" in _error("--frames", d, "--timestamps", ts, "--out", out, "--set", "contrast_pos=0")
    assert "--size" in _error("--frames", d, "--timestamps", ts, "--out", out, "--size", "big")
    assert not out.exists()
    one = tmp_path / "one"
    one.mkdir()
    cv2.imwrite(str(one / "a.png"), frames[0])
    (tmp_path / "one.txt").write_text("0\n")
    assert "at least two" in _error("--frames", one, "--timestamps", tmp_path / "one.txt", "--out", out)
    assert not out.exists() and not list(tmp_path.glob(".ev.h5.*"))  # no partial file left behind


def test_every_flag_reaches_the_pipeline(fake_pipeline, tmp_path):
    import visloc.pipelines.simulate_events as se

    calls = fake_pipeline(se, "simulate_events", se.SimulateSummary(tmp_path / "o.h5"))
    assert invoke("events", "simulate", "--out", tmp_path / "o.h5").exit_code == 0
    default = calls[-1]
    assert default["frames"] is None and default["timestamps_unit"] == "s" and default["video_timing"] == "fps"
    assert default["conf"] == EsimConf() and default["progress"] and not default["overwrite"]
    assert invoke("events", "simulate", "--out", tmp_path / "o.h5", "--frames", "F", "--timestamps", "T",
                  "--timestamps-unit", "us", "--video", "V", "--video-timing", "pos_msec", "--fps", "30",
                  "--size", "346x260", "--max-flow-px", "2", "--overwrite", "--quiet",
                  "--set", "refractory_us=0", "--set", "seed=4").exit_code == 0
    got = calls[-1]
    assert (got["frames"], got["timestamps"], got["video"]) == (Path("F"), Path("T"), Path("V"))
    assert (got["timestamps_unit"], got["video_timing"], got["fps"], got["size"], got["max_flow_px"]) == \
        ("us", "pos_msec", 30.0, (346, 260), 2.0)
    assert got["overwrite"] and not got["progress"] and got["conf"] == EsimConf(refractory_us=0, seed=4)


def test_sources_and_writer_directly(tmp_path):
    ts = tmp_path / "t.txt"
    ts.write_text("# seconds\n1500000000.000001\n\n1500000000.000002  # comment\n")
    assert read_timestamps(ts, "s").tolist() == [1_500_000_000_000_001, 1_500_000_000_000_002]  # exact, no float
    with pytest.raises(InputError, match="no timestamps"):
        (tmp_path / "e.txt").write_text("\n# nothing\n")
        read_timestamps(tmp_path / "e.txt", "s")
    frames = _scene(3, 0.5)
    d, t = _folder(tmp_path, frames, ["0", "0.1", "0.2"])
    seq = folder_frames(d, t, "s")
    got = list(seq)
    assert seq.total == 3 and [ti for _, ti in got] == [0, 100_000, 200_000] and got[0][0].dtype == np.float32
    video = _video(tmp_path / "v.avi", frames, fps=20)
    vs = video_frames(video)
    assert [ti for _, ti in vs] == [0, 50_000, 100_000] and [ti for _, ti in vs] == [0, 50_000, 100_000]  # re-iterable
    assert [ti for _, ti in video_frames(video, "pos_msec")] == [0, 50_000, 100_000]
    ev = EventStream(np.array([0, 5], np.int64), np.array([1, 2], np.uint16), np.array([0, 1], np.uint16),
                     np.array([1, -1], np.int8), (4, 3), 77)
    with EventWriter(tmp_path / "w.h5", (4, 3), 77, attrs={"note": "x"}) as writer:
        writer.append(ev)
        writer.append(ev.slice_index(1, 2))
        with pytest.raises(ValueError, match="before the last"):
            writer.append(ev)
    back, attrs = read_events_h5(tmp_path / "w.h5")
    assert back.t.tolist() == [0, 5, 5] and back.p.tolist() == [1, -1, -1] and attrs == {"note": "x"}
    assert back.sensor_size == (4, 3) and back.origin_us == 77
    with pytest.raises(ValueError, match="format's own"):
        EventWriter(tmp_path / "r.h5", (4, 3), attrs={"origin_us": "1"})
    with h5py.File(tmp_path / "o.h5", "w") as f:
        f.attrs["format"] = "other"
    with pytest.raises(InputError, match="not a visloc event file"):
        simulate_events_cli_record(tmp_path / "o.h5")
