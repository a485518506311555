"""Bad inputs through the CLI, each in its own process under a memory and a time limit.

Every bad input is built here. A refusal must be exit code 2 with one ``error:`` line naming the
file, no traceback and no signal death; the process runs under ``RLIMIT_AS`` (4 GiB: a reader that
trusts a size field in a small file dies of MemoryError or is refused an allocation) and a timeout.
Inputs and finished outputs must be left as they were.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from visloc.io import parts
from visloc.io.features_h5 import list_feature_names, write_features
from visloc.io.locks import output_lock
from visloc.io.matches_h5 import write_matches_file
from visloc.pipelines.common import conf_record
from visloc.pipelines.map_build import FORMAT, VERSION
from visloc.retrieval.index import RetrievalIndex

SRC = Path(__file__).resolve().parents[1] / "src"
MEMORY = 4 << 30
TIMEOUT = 180


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "visloc", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def visloc(*args: object) -> subprocess.CompletedProcess:
    """Run ``visloc ARGS`` in a process limited to ``MEMORY`` bytes and ``TIMEOUT`` seconds."""
    return subprocess.run(_command(*args), env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=_limit, check=False)


def refused(proc: subprocess.CompletedProcess, *words: object) -> str:
    """The one ``error:`` line of a refusal (exit 2, no traceback), checked to hold each of ``words``."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert str(word) in errors[0], errors[0]
    return errors[0]


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        blocks = rng.integers(0, 255, (12, 12), dtype=np.uint8)
        cv2.imwrite(str(folder / f"im{i}.png"), cv2.resize(blocks, (96, 96), interpolation=cv2.INTER_NEAREST))
    return folder


def test_extract_refuses_outputs_of_another_kind(images: Path, tmp_path: Path) -> None:
    matches = write_matches_file(tmp_path / "m.h5", {("a", "b"): (np.zeros(3, np.int32), np.zeros(3))})
    before = matches.read_bytes()
    refused(visloc("extract", images, "--conf", "sift", "--out", matches), matches, "holds matches")
    assert matches.read_bytes() == before
    photo = images / "im0.png"
    photo_bytes = photo.read_bytes()
    refused(visloc("extract", images, "--conf", "sift", "--out", photo, "--overwrite"), photo, "not an HDF5")
    assert photo.read_bytes() == photo_bytes
    refused(visloc("extract", images, "--conf", "sift", "--out", tmp_path), tmp_path, "is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(visloc("extract", images, "--conf", "sift", "--out", blocker / "f.h5"), "not a folder")
    assert not list(tmp_path.glob(".*.lock"))


def test_match_features_refuses_a_feature_file_as_out(images: Path, tmp_path: Path) -> None:
    feats = tmp_path / "f.h5"
    write_features(feats, {"im0.png": {"keypoints": np.zeros((2, 2), np.float32)}})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("im0.png im0.png\n")
    refused(visloc("match-features", "--pairs", pairs, "--features", feats, "--conf", "nn-mutual", "--out", feats),
            feats, "holds features")
    assert list_feature_names(feats) == ["im0.png"]


def test_names_with_whitespace_are_refused_at_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a b.png", "ok.png", "tab\tc.png"):
        cv2.imwrite(str(folder / name), np.zeros((32, 32), np.uint8))
    line = refused(visloc("extract", folder, "--conf", "sift", "--out", tmp_path / "f.h5"), folder,
                   "2 image names contain whitespace", "'a b.png'", "'tab\\tc.png'")
    assert "ok.png" not in line and not (tmp_path / "f.h5").exists()
    refused(visloc("pairs", "exhaustive", "--images", folder, "--out", tmp_path / "p.txt"), folder, "'a b.png'")
    assert not (tmp_path / "p.txt").exists()
    root = _fake_map(tmp_path / "map")
    refused(visloc("localize", "--map", root, "--queries", folder, "--out", tmp_path / "poses.txt"), folder,
            "'a b.png'")
    assert not (tmp_path / "poses.txt").exists()


def _fake_map(root: Path, points3d_bytes: int | None = None) -> Path:
    """A map folder whose record is valid, with a synthetic COLMAP model (``points3D.bin`` cut if asked)."""
    files = {k: f"{k}.h5" for k in ("features", "global_features", "matches", "index", "database", "vocabulary")}
    record = {"format": FORMAT, "version": VERSION, "files": {**files, "pairs": "pairs.txt", "model": "sfm"},
              "extractor": {"name": "sift", "conf": {}}, "retrieval": {"name": "sift", "conf": {}},
              "matcher": {"name": "nn-mutual", "conf": {}}}
    (root / "sfm").mkdir(parents=True)
    (root / "map.json").write_text(json.dumps(record))
    options = pycolmap.SyntheticDatasetOptions()
    options.num_points3D = 200
    pycolmap.synthesize_dataset(options).write_binary(str(root / "sfm"))
    if points3d_bytes is not None:
        with open(root / "sfm" / "points3D.bin", "r+b") as f:
            f.truncate(points3d_bytes)
    return root


def test_a_cut_points3d_file_fails_at_once(images: Path, tmp_path: Path) -> None:
    root = _fake_map(tmp_path / "map", points3d_bytes=100)
    start = time.perf_counter()
    refused(visloc("localize", "--map", root, "--queries", images, "--out", tmp_path / "poses.txt"),
            root / "sfm" / "points3D.bin", "cut short")
    assert time.perf_counter() - start < TIMEOUT / 2 and not (tmp_path / "poses.txt").exists()


def test_forged_faiss_size_field_and_huge_k(tmp_path: Path) -> None:
    names = [f"db{i}.jpg" for i in range(4)]
    vectors = _unit(4, 8, seed=1)
    feats = tmp_path / "db.h5"
    write_features(feats, {n: {"global_descriptor": v} for n, v in zip(names, vectors, strict=True)})
    index = RetrievalIndex.build(names, vectors).save(tmp_path / "db.index")
    out = tmp_path / "pairs.txt"
    proc = visloc("search", "--index", index, "--features", feats, "-k", 1_000_000_000, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 4 * 3  # every other database image, none with itself
    data = bytearray(index.read_bytes())
    assert data[:4] == b"IxFI"
    data[37:45] = (1 << 39).to_bytes(8, "little")  # the stored vectors' length: 2 TiB of floats
    index.write_bytes(bytes(data))
    refused(visloc("search", "--index", index, "--features", feats, "--out", tmp_path / "p2.txt"), index,
            "not a readable faiss index")


def test_pickle_of_shared_references_is_refused(tmp_path: Path) -> None:
    nested: list = [0]
    for _ in range(12):
        nested = [nested] * 8  # 8**12 leaves as a tree, a few hundred bytes as a pickle
    bomb = tmp_path / "gnd_bomb.pkl"
    bomb.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": nested, "hard": [],
                                                                               "junk": []}]}, protocol=2))
    assert bomb.stat().st_size < 1000
    ranks = tmp_path / "ranks.npy"
    np.save(ranks, np.zeros((1, 1), np.int64))
    refused(visloc("eval", "retrieval", "--gnd", bomb, "--ranks", ranks), bomb, "more than")


def test_huge_window_with_loop_is_clamped(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "seq.txt"
    proc = visloc("pairs", "sequential", "--images", images, "--window", 1_000_000_000, "--loop", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 6  # every pair of 4 images once
    refused(visloc("pairs", "sequential", "--images", images, "--out", images / "im1.png"), "not a text pairs file")


def test_a_second_writer_fails_at_once(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    with output_lock(out):
        start = time.perf_counter()
        refused(visloc("extract", images, "--conf", "sift", "--out", out), out, "another visloc job is writing it")
        assert time.perf_counter() - start < TIMEOUT / 2
    assert not out.exists()


def test_two_concurrent_extracts_keep_every_image(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    procs = [subprocess.Popen(_command("extract", images, "--conf", "sift", "--out", out), env=_env(),
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=_limit)
             for _ in range(2)]
    results = [(p.wait(timeout=TIMEOUT), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # one after the other, or the second refused at once
    for code, stderr in results:
        if code == 2:
            assert "another visloc job is writing it" in stderr and "Traceback" not in stderr
    assert list_feature_names(out) == sorted(p.name for p in images.glob("*.png"))


def test_parts_of_another_conf_are_refused_by_name(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    # a killed ALIKED run: its record and one staged image (64-d descriptors)
    parts.claim(out, conf_record("aliked-n16", {"max_num_keypoints": 1024}))
    parts.write_part(out, "im0.png", {"keypoints": np.zeros((1, 2), np.float32),
                                      "descriptors": np.zeros((64, 1), np.float32)})
    refused(visloc("extract", images, "--conf", "sift", "--out", out), parts.parts_dir(out),
            "1 items staged by an interrupted run with aliked-n16", "--overwrite")
    assert parts.staged_names(out) == {"im0.png"}  # untouched
    proc = visloc("extract", images, "--conf", "sift", "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list_feature_names(out) == sorted(p.name for p in images.glob("*.png"))
    assert not parts.parts_dir(out).exists()


@pytest.fixture(scope="module")
def with_tiny(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """The four images and an 8x8 one, too small for ALIKED, DISK and vlad-aliked."""
    folder = tmp_path_factory.mktemp("with_tiny")
    for p in images.glob("*.png"):
        (folder / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(folder / "tiny.png"), np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("conf", ["aliked-n16", "disk"])
def test_an_image_too_small_for_the_network_is_skipped_alone(with_tiny: Path, tmp_path: Path, conf: str) -> None:
    out = tmp_path / "f.h5"
    proc = visloc("extract", with_tiny, "--conf", conf, "--out", out, "--batch-size", 4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped tiny.png: image of 8x8 px after resizing:" in proc.stdout
    assert "needs sides of at least" in proc.stdout
    assert list_feature_names(out) == [f"im{i}.png" for i in range(4)]


def test_vocab_skips_an_image_too_small_for_aliked(with_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "vocab.pt"
    proc = visloc("vocab", with_tiny, "--out", out, "--clusters", 4, "--set", "max_num_keypoints=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped tiny.png: image of 8x8 px after resizing: ALIKED needs sides of at least 16 px" in proc.stdout
    assert out.is_file()


def test_out_of_range_conf_is_one_line_before_opencv(images: Path, tmp_path: Path) -> None:
    line = refused(visloc("extract", images, "--conf", "orb", "--set", "n_levels=0", "--out", tmp_path / "f.h5"),
                   "ORBConf.n_levels", "got 0")
    assert "Segmentation" not in line and not (tmp_path / "f.h5").exists()


def test_nan_descriptors_are_reported_per_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = {"keypoints": rng.random((50, 2), dtype=np.float32) * 90, "descriptors": _unit(50, 128, seed=2),
            "scores": np.ones(50, np.float32), "image_size": np.array([96, 96])}
    nan = {**good, "descriptors": good["descriptors"].copy()}
    nan["descriptors"][3, 5] = np.nan
    feats = tmp_path / "f.h5"
    write_features(feats, {"a.png": good, "b.png": good, "n.png": nan})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png\na.png n.png\n")
    proc = visloc("match-features", "--pairs", pairs, "--features", feats, "--conf", "nn-mutual",
                  "--out", tmp_path / "m.h5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reason = f"{feats}: features of image 'n.png' hold NaN or inf values (descriptors)"
    assert f"skipped a.png n.png: {reason}" in proc.stdout
    assert "1 new" in proc.stdout


def test_user_errors_of_options_and_confs_are_one_line(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    refused(visloc("extract", images, "--conf", "sift", "--set", "max_num_keypoints", "--out", out),
            "'max_num_keypoints'", "key=value")
    folder = tmp_path / "conf_dir"
    folder.mkdir()
    refused(visloc("train", folder), folder, "is a directory")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    refused(visloc("train", latin1), latin1, "not UTF-8")
    for option, value in (("--runs", 0), ("--threads", 0), ("--width", 0), ("--warmup", -1)):
        refused(visloc("bench", "--extractor", "sift", "--matcher", "nn-mutual:sift", option, value), option, value)
    refused(visloc("bench", "--extractor", "sift", "--out", tmp_path), tmp_path, "is a directory")
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(images: Path, tmp_path: Path) -> None:
    refused(visloc("extract", images, "--conf", "sift", "--device", "cuda", "--out", tmp_path / "f.h5"),
            "--device cuda", "no CUDA GPU")
    assert not (tmp_path / "f.h5").exists()


def test_a_map_without_its_features_fails_at_the_start(images: Path, tmp_path: Path) -> None:
    root = _fake_map(tmp_path / "map")
    refused(visloc("localize", "--map", root, "--queries", images, "--out", tmp_path / "poses.txt"),
            root / "features.h5", "missing", "visloc map build")
    assert not (tmp_path / "poses.txt").exists() and not (tmp_path / "poses.features.h5").exists()
