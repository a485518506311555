"""``visloc live``: the frame reader thread, the atomic video writer, the matching loop, its keys and its CLI."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.errors import InputError
from visloc.io.video import THREAD_NAME, FrameReader, OpenedVideo, VideoOut, fit_frame, open_video
from visloc.matching.base import ImageMatcher
from visloc.pipelines import live as live_mod
from visloc.pipelines.live import DEFAULT_MATCHER, LiveConf, run_live
from visloc.types import Matches
from visloc.viz.matches import confidence_colors

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")
#: a fast image matcher on this CPU (about 16 FPS at 640x480 here, drawing and writing included)
FAST = ("extractor=orb", "matcher=nn-mutual", "extractor_set=[max_num_keypoints=1024]")


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 5-frame 160x120 video, frame i filled with the grey level 40 * i + 20 (written by ``VideoOut``)."""
    out = VideoOut(tmp_path / "clip" / "clip.mp4", fps=5)
    for i in range(5):
        frame = np.full((120, 160, 3), 40 * i + 20, np.uint8)
        cv2.circle(frame, (30 + 20 * i, 60), 10, (255, 255, 255), -1)
        out.write(frame)
    path = out.close()
    assert path is not None
    return path


class Recorder(ImageMatcher):
    """An image matcher that records the pairs it is given; 3 matches at fixed points, scores 0.1/0.5/0.9."""

    def __init__(self, fail_at: int | None = None, interrupt_at: int | None = None) -> None:
        super().__init__(None)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.fail_at, self.interrupt_at = fail_at, interrupt_at

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        self.pairs.append((image0.clone(), image1.clone()))
        if len(self.pairs) == self.fail_at:
            raise RuntimeError("boom")
        if len(self.pairs) == self.interrupt_at:
            raise KeyboardInterrupt
        kp = torch.tensor([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
        return [Matches(torch.tensor([[0, 0], [1, 1], [2, 2]]), torch.tensor([0.1, 0.5, 0.9]), 4, 4, kp, kp)]


class ScriptedDisplay:
    """A display whose n-th ``show`` returns ``keys[n]`` (-1 after the script)."""

    def __init__(self, keys: list[int | str]) -> None:
        self.keys = [ord(k) if isinstance(k, str) else k for k in keys]
        self.waits: list[int] = []

    def show(self, canvas: np.ndarray, wait_ms: int) -> int:
        self.waits.append(wait_ms)
        return self.keys[len(self.waits) - 1] if len(self.waits) <= len(self.keys) else -1

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- on vtest.avi with a real matcher


@needs_vtest
def test_ten_frames_of_vtest(tmp_path):
    out = tmp_path / "annotated.mp4"
    conf = LiveConf(matcher="detector-pair", matcher_set=FAST, max_frames=10, out=out, show=False)
    summary = run_live(VTEST, conf)
    assert (summary.frames, summary.ended, summary.out) == (10, "max frames", out)
    frames = _frames(out)
    assert len(frames) == 10
    assert {f.shape for f in frames} == {(480, 640 + 10 + 640, 3)}  # two 640x480 frames side by side
    # consecutive frames of a fixed camera against the first one: 746 measured with ORB-1024 + nn-mutual
    assert summary.matches_mean > 400
    assert summary.fps_mean > 0.5
    assert _reader_threads() == []
    assert _no_temp_files(tmp_path)
    assert any("annotated video -> " in line for line in summary.lines())


@needs_vtest
def test_previous_mode_on_vtest(tmp_path):
    conf = LiveConf(matcher="detector-pair", matcher_set=FAST, max_frames=4, mode="previous", size=(320, 240),
                    out=tmp_path / "prev.mp4")
    summary = run_live(VTEST, conf)
    assert summary.frames == 4
    assert summary.matches_mean > 150  # 307 measured at 320x240
    assert {f.shape for f in _frames(tmp_path / "prev.mp4")} == {(240, 650, 3)}


# ---------------------------------------------------------------- the loop, on a small clip


def test_reference_mode_matches_every_frame_against_the_first(clip, tmp_path):
    rec = Recorder()
    summary = run_live(clip, LiveConf(size=(80, 48), out=tmp_path / "o.mp4"), matcher=rec)
    assert (summary.frames, summary.ended, summary.matches_mean) == (5, "end of video", 3.0)
    first = rec.pairs[0][1]
    assert rec.pairs[0][0].shape == (1, 3, 48, 80)
    assert all(torch.equal(p[0], first) for p in rec.pairs)
    assert not torch.equal(rec.pairs[1][1], first)
    assert len(_frames(tmp_path / "o.mp4")) == 5
    assert _reader_threads() == []


def test_previous_mode_matches_each_frame_against_the_one_before(clip, tmp_path):
    rec = Recorder()
    run_live(clip, LiveConf(mode="previous", out=tmp_path / "o.mp4"), matcher=rec)
    assert torch.equal(rec.pairs[0][0], rec.pairs[0][1])
    assert all(torch.equal(rec.pairs[k][0], rec.pairs[k - 1][1]) for k in range(1, 5))


def test_keys_reset_pause_quit(clip, tmp_path):
    # shows: frame 0, frame 1, frame 2 + r, frame 3 + p, paused, paused, p, frame 4 + q
    display = ScriptedDisplay([-1, -1, "r", "p", -1, -1, "p", "q"])
    rec = Recorder()
    summary = run_live(clip, LiveConf(out=tmp_path / "o.mp4"), matcher=rec, display=display)
    assert (summary.frames, summary.ended) == (5, "quit")
    assert display.waits == [1, 1, 1, 1, 50, 50, 50, 1]
    assert torch.equal(rec.pairs[2][0], rec.pairs[0][1])  # before the reset
    assert all(torch.equal(rec.pairs[k][0], rec.pairs[2][1]) for k in (3, 4))  # after it: frame 2
    assert len(_frames(tmp_path / "o.mp4")) == 5


def test_quit_stops_early_and_a_display_alone_writes_nothing(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_live(clip, LiveConf(), matcher=Recorder(), display=ScriptedDisplay([-1, "q"]))
    assert (summary.frames, summary.ended, summary.out) == (2, "quit", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


def test_without_a_display_the_video_goes_to_a_default_path(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not live_mod.display_available()
    summary = run_live(clip, LiveConf(max_frames=3), matcher=Recorder())
    assert summary.out == Path("clip-live.mp4")
    assert len(_frames(tmp_path / "clip-live.mp4")) == 3
    with pytest.raises(InputError, match="--show: no display"):
        run_live(clip, LiveConf(show=True), matcher=Recorder())


def test_an_error_stops_the_reader_and_publishes_nothing(clip, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        run_live(clip, LiveConf(out=tmp_path / "o.mp4"), matcher=Recorder(fail_at=3))
    assert _reader_threads() == []
    assert not (tmp_path / "o.mp4").exists()
    assert _no_temp_files(tmp_path)


def test_ctrl_c_keeps_the_frames_written(clip, tmp_path):
    summary = run_live(clip, LiveConf(out=tmp_path / "o.mp4"), matcher=Recorder(interrupt_at=4))
    assert (summary.frames, summary.ended) == (3, "interrupted")
    assert len(_frames(tmp_path / "o.mp4")) == 3  # a closed, readable file
    assert _reader_threads() == []
    assert _no_temp_files(tmp_path)


# ---------------------------------------------------------------- bad sources


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.mp4: video file not found"):
        run_live(tmp_path / "nope.mp4", LiveConf(), matcher=Recorder())


def test_a_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n")
    with pytest.raises(InputError, match=r"notes\.txt: cannot decode as a video"):
        run_live(path, LiveConf(), matcher=Recorder())
    assert _reader_threads() == []


def test_a_camera_that_does_not_open():
    with pytest.raises(InputError, match="camera 97: cannot open"):
        open_video(97)
    with pytest.raises(InputError, match="camera -1: expected a camera id >= 0"):
        open_video(-1)


def test_a_feature_matcher_is_refused(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="matcher 'nn-mutual' matches features, not images"):
        run_live(clip, LiveConf(matcher="nn-mutual", show=False))


# ---------------------------------------------------------------- the reader thread


class FakeCapture:
    """``n`` 2x2 frames filled with their index, ``delay`` seconds each; raises at ``fail_at``."""

    def __init__(self, n: int, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.i, self.n, self.delay, self.fail_at, self.released = 0, n, delay, fail_at, False

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.delay)
        if self.i == self.fail_at:
            raise OSError("device unplugged")
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, np.full((2, 2, 3), self.i, np.uint8)

    def release(self) -> None:
        self.released = True


def _fake_video(cap: FakeCapture, live: bool) -> OpenedVideo:
    ok, first = cap.read()
    assert ok and first is not None
    return OpenedVideo(cap, first, live, 0.0, "fake")


def _drain(reader: FrameReader, pause: float = 0.0) -> list[int]:
    got = []
    while (frame := reader.read(timeout=5)) is not None:
        got.append(int(frame[0, 0, 0]))
        time.sleep(pause)
    return got


def test_a_file_reader_delivers_every_frame_in_order():
    cap = FakeCapture(40)
    with FrameReader(_fake_video(cap, live=False), queue_size=2) as reader:
        assert _drain(reader, pause=0.002) == list(range(1, 41))
        assert reader.dropped == 0
    assert not reader.alive and cap.released


def test_a_camera_reader_drops_old_frames():
    cap = FakeCapture(60, delay=0.001)
    with FrameReader(_fake_video(cap, live=True), queue_size=2) as reader:
        got = _drain(reader, pause=0.02)  # a consumer 20x slower than the camera
    assert reader.dropped > 20 and len(got) + reader.dropped == 60
    assert got == sorted(got) and got[-1] == 60  # in order, and the newest frame is not lost
    assert not reader.alive


def test_closing_stops_a_reader_blocked_on_a_full_queue():
    cap = FakeCapture(10_000)
    reader = FrameReader(_fake_video(cap, live=False), queue_size=1)
    assert reader.read(timeout=5) is not None
    reader.close()
    assert not reader.alive and cap.released and cap.i < 100


def test_a_read_error_reaches_the_consumer():
    with FrameReader(_fake_video(FakeCapture(10, fail_at=3), live=True)) as reader:
        with pytest.raises(OSError, match="device unplugged"):
            _drain(reader)
    assert not reader.alive


# ---------------------------------------------------------------- pieces


def test_fit_frame_keeps_the_aspect_and_crops_the_centre():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 100:] = 255  # right half white
    out = fit_frame(frame, (100, 100))  # no scaling needed (height fits), crop columns 50..149
    assert out.shape == (100, 100, 3)
    assert (out[:, :50] == 0).all() and (out[:, 50:] == 255).all()
    assert fit_frame(np.zeros((576, 768, 3), np.uint8), (640, 480)).shape == (480, 640, 3)
    assert fit_frame(np.zeros((10, 10, 3), np.uint8), (40, 20)).shape == (20, 40, 3)  # upscales


def test_confidence_colors():
    assert confidence_colors(np.array([0.0, 0.5, 1.0, 2.0])).tolist() == [
        [0, 0, 230], [0, 220, 230], [0, 200, 0], [0, 200, 0]]


def test_video_out_is_atomic(tmp_path):
    out = VideoOut(tmp_path / "v.mp4", fps=10)
    out.write(np.zeros((32, 48, 3), np.uint8))
    assert not (tmp_path / "v.mp4").exists() and len(list(tmp_path.iterdir())) == 1  # the temp file only
    with pytest.raises(ValueError, match="expected 48x32"):
        out.write(np.zeros((32, 50, 3), np.uint8))
    assert out.close(publish=False) is None
    assert list(tmp_path.iterdir()) == []
    assert VideoOut(tmp_path / "empty.mp4", fps=10).close() is None  # no frame: nothing published


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "next"}, "mode: expected one of reference, previous"),
    ({"size": (8, 480)}, "size: expected"),
    ({"out": Path("a.png")}, "a.png: expected a video file"),
    ({"max_frames": 0}, "max_frames: expected >= 1"),
])
def test_conf_checks(kwargs, message):
    with pytest.raises(InputError, match=message):
        LiveConf(**kwargs)


# ---------------------------------------------------------------- the command


def test_every_flag_reaches_the_conf(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(live_mod, "run_live", lambda source, conf: seen.append((source, conf)) or
                        live_mod.LiveSummary(1, 1.0, 2.0, None, "max frames", str(source)))
    args = ["live", "--video", "v.avi", "--matcher", "detector-pair", "--set", "extractor=orb", "--set",
            "matcher=nn-mutual", "--size", "320x240", "--mode", "previous", "--out", str(tmp_path / "a.mp4"),
            "--max-frames", "7", "--no-show", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "live: 1 frames of v.avi (max frames)" in result.output
    assert seen[-1] == (Path("v.avi"), LiveConf(matcher="detector-pair", matcher_set=("extractor=orb",
                        "matcher=nn-mutual"), size=(320, 240), mode="previous", out=tmp_path / "a.mp4",
                        max_frames=7, show=False, device="cpu"))
    assert CliRunner().invoke(app, ["live", "--camera", "2", "--show"]).exit_code == 0
    assert seen[-1] == (2, LiveConf(show=True))
    assert CliRunner().invoke(app, ["live", "--camera", "0"]).exit_code == 0
    assert seen[-1] == (0, LiveConf())  # no flag: the API's defaults


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["live", "--video", str(tmp_path / "missing.avi")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'missing.avi'}: video file not found"
    for args, message in ((["live"], "give exactly one of --video FILE or --camera ID"),
                          (["live", "--camera", "0", "--size", "640"], "--size: expected WIDTHxHEIGHT")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output
    assert DEFAULT_MATCHER in runner.invoke(app, ["live", "--help"]).output  # the help names the default
