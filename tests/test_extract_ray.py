"""``visloc extract --ray``: shards in Ray tasks on a local 2-CPU cluster give the single-process file.

The cluster tests share one cluster (started once for the module, about 4 s). Faults are injected by
``CrashOnce``, a SIFT that kills its own process (``os._exit``) the first time it sees an image of a
given height, disarmed by a marker file it creates just before; Ray workers import this module to
unpickle it, so the cluster is started with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visloc.cli import app
from visloc.errors import InputError
from visloc.features import EXTRACTORS
from visloc.features.opencv import SIFT, SIFTConf
from visloc.io import features_h5
from visloc.io.parts import parts_dir
from visloc.pipelines import extract_ray
from visloc.pipelines.extract import ATTR, ExtractError, extract_features, plan_extraction
from visloc.pipelines.extract_ray import ShardTask, extract_features_ray, shard_names
from visloc.pipelines.ray_tasks import INSTALL_HINT, TaskFailedError
from visloc.types import Features

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
HEIGHTS = tuple(120 + 8 * i for i in range(8))  # one height per image: how CrashOnce picks its victim
NAMES = tuple(f"img{i}.png" for i in range(7)) + ("sub/img7.png",)


@dataclass(frozen=True)
class CrashConf(SIFTConf):
    """SIFT's conf plus the fault: kill the process on an image ``victim_height`` high, unless ``marker`` exists."""

    marker: str = ""
    victim_height: int = 0
    log: str = ""  # each call appends "pid height"
    fail_build: str = ""  # raise InputError(fail_build) when built


class CrashOnce(SIFT):
    """SIFT that kills its worker once (see ``CrashConf``)."""

    def __init__(self, conf: CrashConf) -> None:
        if conf.fail_build:
            raise InputError(conf.fail_build)
        super().__init__(conf)
        self.crash = conf

    def forward(self, image: torch.Tensor) -> list[Features]:
        height = int(image.shape[-2])
        with open(self.crash.log, "a") as f:
            f.write(f"{os.getpid()} {height}\n")
        if height == self.crash.victim_height and not os.path.exists(self.crash.marker):
            Path(self.crash.marker).touch()
            os._exit(1)  # as a SIGKILL or the OOM killer would end it: no cleanup, no exception
        return super().forward(image)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight small crops of real photos, each of its own height (``HEIGHTS``), one in ``sub/``."""
    import skimage.data

    root = tmp_path_factory.mktemp("ray-images")
    (root / "sub").mkdir()
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    for i, (name, h) in enumerate(zip(NAMES, HEIGHTS, strict=True)):
        crop = photos[i % 3][10 * i:10 * i + h, 20 * i:20 * i + 160]
        cv2.imwrite(str(root / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """SIFT features of ``images`` from the single-process path."""
    out = tmp_path_factory.mktemp("ray-ref") / "single.h5"
    assert extract_features(images, out, extractor="sift", progress=False).done == len(NAMES)
    return out


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster for the module; its workers can import this module (``CrashOnce``)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(HERE), str(SRC), os.environ.get("PYTHONPATH", "")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", path)  # inherited by the raylet and its workers
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def crash_once(monkeypatch, tmp_path):
    """Register ``test-crash-once`` for this test only; returns its overrides (marker, log) for a victim."""
    monkeypatch.setattr(EXTRACTORS, "_entries", dict(EXTRACTORS._entries))
    EXTRACTORS.register("test-crash-once", CrashConf(), CrashOnce, "SIFT that kills its worker once", kind="local")

    def overrides(victim: int, **more: str) -> dict[str, object]:
        return {"marker": str(tmp_path / "crashed"), "victim_height": HEIGHTS[victim], "log": str(tmp_path / "log"),
                **more}

    return overrides


def _calls(log: Path) -> list[tuple[int, int]]:
    return [(int(p), int(h)) for p, h in (line.split() for line in log.read_text().splitlines())]


def _assert_same_features(path: Path, ref: Path, names=NAMES) -> None:
    assert features_h5.list_feature_names(path) == sorted(names)
    for name in names:
        got, want = features_h5.read_features(path, name), features_h5.read_features(ref, name)
        assert sorted(got) == sorted(want), name
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}/{key}")


def _add_bad_images(root: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad.jpg").write_text("this is not a JPEG\n")


# --- no cluster -----------------------------------------------------------------------------------


def test_shards_are_consecutive_slices_in_job_order():
    assert shard_names(list("abcdefg"), 3) == [("a", "b", "c"), ("d", "e", "f"), ("g",)]
    assert shard_names([], 3) == []
    with pytest.raises(InputError, match="shard_size"):
        shard_names(["a"], 0)


def test_missing_ray_is_one_line_naming_the_extra(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    (tmp_path / "f.h5").write_bytes(b"kept")
    result = CliRunner().invoke(app, ["extract", str(images), "--out", str(tmp_path / "f.h5"), "--conf", "sift",
                                      "--ray", "--overwrite"])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: Ray is not installed; install visloc's Ray extra: {INSTALL_HINT}\n"
    assert INSTALL_HINT == 'pip install -e ".[ray]"'
    assert (tmp_path / "f.h5").read_bytes() == b"kept"  # said before --overwrite removed anything


def test_a_worker_that_does_not_see_the_output_folder_stops_the_job(images, tmp_path):
    out, threads = tmp_path / "f.h5", torch.get_num_threads()  # run here: leave this process's threads as they are
    task = ShardTask(0, NAMES[:1], plan_extraction(images, out, extractor="sift"), SIFT, "ray-job-0.token", threads,
                     False, "cpu", 1, 0, None)
    with pytest.raises(ExtractError, match=r"must be on storage every node shares"):
        extract_ray._run_shard(task)
    parts_dir(out).mkdir(exist_ok=True)  # the job record may have made it
    (parts_dir(out) / task.token).write_text("driver\n")
    assert extract_ray._run_shard(task) == extract_ray.ShardResult(1, 0, ())  # the same task, seeing the token
    assert extract_ray._run_shard(task) == extract_ray.ShardResult(0, 1, ())  # a retry: staged, so skipped
    missing = replace(task, plan=replace(task.plan, image_dir=tmp_path / "gone"))
    with pytest.raises(ExtractError, match=r"gone: not found by the Ray worker"):
        extract_ray._run_shard(missing)


# --- on a local cluster ---------------------------------------------------------------------------


@pytest.mark.ray
def test_ray_file_equals_the_single_process_file(cluster, images, reference, tmp_path):
    out = tmp_path / "ray.h5"
    summary = extract_features_ray(images, out, extractor="sift", shard_size=3, progress=False)
    assert (summary.done, summary.already_done, summary.failed) == (len(NAMES), 0, [])
    _assert_same_features(out, reference)
    assert features_h5.read_attrs(out)[ATTR] == features_h5.read_attrs(reference)[ATTR]
    assert not parts_dir(out).exists()
    again = extract_features_ray(images, out, extractor="sift", shard_size=3, progress=False)
    assert (again.done, again.already_done) == (0, len(NAMES))


@pytest.mark.ray
def test_bad_images_are_skipped_and_named(cluster, images, tmp_path):
    import shutil

    root = Path(shutil.copytree(images, tmp_path / "images"))
    _add_bad_images(root)
    single = extract_features(root, tmp_path / "single.h5", extractor="sift", progress=False)
    summary = extract_features_ray(root, tmp_path / "ray.h5", extractor="sift", shard_size=4, progress=False)
    assert summary.done == single.done == len(NAMES)
    assert sorted(summary.failed) == sorted(single.failed) and len(summary.failed) == 2
    assert {name for name, _ in summary.failed} == {"bad.jpg", "trunc.jpg"}
    assert all(f"  skipped {name}: {reason}" in summary.lines("extract") for name, reason in summary.failed)
    _assert_same_features(tmp_path / "ray.h5", tmp_path / "single.h5")


@pytest.mark.ray
def test_a_killed_task_is_retried_and_skips_what_it_staged(cluster, crash_once, images, reference, tmp_path):
    out, victim = tmp_path / "ray.h5", 4  # shards of 3: img4 is the middle of shard 1 (img3, img4, img5)
    summary = extract_features_ray(images, out, extractor="test-crash-once", overrides=crash_once(victim),
                                   shard_size=3, progress=False)
    assert (tmp_path / "crashed").exists()  # the fault did happen
    assert (summary.done, summary.failed) == (len(NAMES), [])
    _assert_same_features(out, reference)
    calls = _calls(tmp_path / "log")
    killed = {pid for pid, h in calls if h == HEIGHTS[victim]}
    assert len(killed) == 2  # the victim was seen by the killed worker, then by the retry's
    assert [h for _, h in calls].count(HEIGHTS[3]) == 1  # staged before the kill: not extracted again
    assert sorted(h for _, h in calls if h != HEIGHTS[victim]) == sorted(h for h in HEIGHTS if h != HEIGHTS[victim])


@pytest.mark.ray
def test_past_its_retries_the_job_fails_and_keeps_what_finished(cluster, crash_once, images, reference, tmp_path):
    out, victim = tmp_path / "ray.h5", 1
    with pytest.raises(TaskFailedError, match=r"shard 0 \(3 images, img0.png .. img2.png\): .*re-run the job"):
        extract_features_ray(images, out, extractor="test-crash-once", overrides=crash_once(victim), shard_size=3,
                             max_retries=0, progress=False)
    kept = features_h5.list_feature_names(out)
    assert "img0.png" in kept and "img1.png" not in kept  # staged before the kill, merged by the driver
    summary = extract_features_ray(images, out, extractor="test-crash-once", overrides=crash_once(victim),
                                   shard_size=3, progress=False)  # the marker now disarms the fault
    assert summary.done + summary.already_done == len(NAMES) and summary.done >= 1
    _assert_same_features(out, reference)


@pytest.mark.ray
def test_a_user_error_in_a_task_reaches_the_caller_as_itself(cluster, crash_once, images, tmp_path):
    with pytest.raises(InputError, match=r"^weights.pt: not found$"):
        extract_features_ray(images, tmp_path / "ray.h5", extractor="test-crash-once",
                             overrides=crash_once(0, fail_build="weights.pt: not found"), shard_size=3,
                             progress=False)


@pytest.mark.ray
def test_cli_starts_and_stops_a_local_cluster(images, reference, tmp_path):
    """The command line in a fresh process: its own local cluster (not the module's), shut down after."""
    pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "cli.h5"
    proc = subprocess.run([sys.executable, "-m", "visloc", "extract", str(images), "--conf", "sift", "--out", str(out),
                           "--ray", "--ray-cpus", "2", "--shard-size", "3"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"extract: {len(NAMES)} new, 0 already done, 0 skipped -> {out}" in proc.stdout
    _assert_same_features(out, reference)


def test_a_cluster_that_cannot_be_reached_is_one_line(images, tmp_path, monkeypatch):
    """Ray's ConnectionError (what ``ray.init`` raises when it finds no cluster) becomes one line; a fake ``ray``
    module stands in (a real unreachable address makes Ray wait minutes, and "auto" finds any cluster here)."""
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    fake = SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    result = CliRunner().invoke(app, ["extract", str(images), "--out", str(tmp_path / "f.h5"), "--conf", "sift",
                                      "--ray-address", "10.0.0.9:6379"])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("error: cannot connect to the Ray cluster at 10.0.0.9:6379: Could not find any running "
                             "Ray instance.\n")
    assert calls == [{"address": "10.0.0.9:6379"}]  # nothing to shut down


@pytest.mark.ray
def test_an_existing_connection_is_used_and_left_open(cluster, images, reference, tmp_path):
    from visloc.pipelines.ray_tasks import connect

    with pytest.raises(InputError, match="already connected to Ray"):
        extract_features_ray(images, tmp_path / "f.h5", extractor="sift", address="auto", progress=False)
    with connect() as ray:
        assert ray is cluster
    assert cluster.is_initialized()
