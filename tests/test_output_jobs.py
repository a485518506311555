"""One writer per output, and outputs that cannot destroy inputs: map build, index build, vocab, delf-pca, search,
consolidate, match's picture, export and the event simulators.

Each case is built here: a lock held by this process makes the command (run in a process of its own) fail
with one line naming the output; a photo, a folder or another kind of file as the output is refused before
any work (the work is patched to fail the test), and is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from test_bad_inputs import refused, visloc

from visloc.features import delf_pca
from visloc.io import shards
from visloc.io.features_h5 import write_features
from visloc.io.locks import output_lock
from visloc.io.outputs import OutputError
from visloc.pipelines import export, map_build, match_pair, retrieve, vocab
from visloc.pipelines.map_build import MapFiles
from visloc.pipelines.simulate_world import simulate_traversal
from visloc.retrieval.index import RetrievalIndex
from visloc.retrieval.index_files import names_path
from visloc.retrieval.vlad import save_vocabulary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/`` (3 photos), ``f.h5`` (local and global descriptors) and ``db.index`` of it."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"im{i}.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
    g = rng.normal(size=(3, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    write_features(root / "f.h5", {f"im{i}.png": {"keypoints": rng.random((50, 2), dtype=np.float32) * 64,
                                                   "descriptors": rng.normal(size=(50, 16)).astype(np.float32),
                                                   "global_descriptor": g[i]} for i in range(3)})
    retrieve.build_index(root / "f.h5", root / "db.index")
    return root


def _commands(root: Path, out: Path) -> dict[str, list[object]]:
    return {"map": ["map", "build", "--images", root / "images", "--out", out],
            "index": ["index", "build", "--features", root / "f.h5", "--out", out],
            "vocab": ["vocab", root / "images", "--out", out, "--clusters", 4],
            "delf-pca": ["delf-pca", root / "f.h5", "--out", out, "--dim", 4],
            "search": ["search", "--index", root / "db.index", "--features", root / "f.h5", "--out", out]}


@pytest.mark.parametrize("command", ["map", "index", "vocab", "delf-pca", "search"])
def test_a_second_writer_gets_one_line_naming_the_output(inputs: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        refused(visloc(*_commands(inputs, out)[command]), out, "another visloc job is writing it")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any work of the five jobs fails the test: a refusal must come before it."""
    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("the job started working before refusing its output")

    monkeypatch.setattr(map_build, "_inputs", never)
    monkeypatch.setattr(retrieve.RetrievalIndex, "build_on_disk", never)
    monkeypatch.setattr(retrieve, "_retrieve", never)
    monkeypatch.setattr(vocab, "_descriptors", never)
    monkeypatch.setattr(delf_pca, "_sample", never)


def _jobs(root: Path) -> dict[str, Callable[[Path], object]]:
    return {"index": lambda out: retrieve.build_index(root / "f.h5", out),
            "vocab": lambda out: vocab.build_vocabulary(root / "images", out, num_clusters=4),
            "delf-pca": lambda out: delf_pca.learn_delf_pca_from_features(root / "f.h5", out, dim=4),
            "search": lambda out: retrieve.retrieve_pairs(root / "db.index", root / "f.h5", out, k=1)}


@pytest.mark.parametrize("job", ["index", "vocab", "delf-pca", "search"])
def test_a_photo_or_a_folder_as_out_is_refused_before_work(inputs: Path, tmp_path: Path, job: str,
                                                           no_work: None) -> None:
    run = _jobs(inputs)[job]
    photo = inputs / "images" / "im0.png"
    before = photo.read_bytes()
    with pytest.raises(OutputError, match=f"{photo}: exists and is not a .*choose another --out"):
        run(photo)
    assert photo.read_bytes() == before
    with pytest.raises(OutputError, match=f"{tmp_path}: is a directory; --out must name"):
        run(tmp_path)
    with pytest.raises(OutputError, match="is not a folder"):
        run(photo / "x")
    assert not list(tmp_path.iterdir()) and not list(photo.parent.glob(".*"))


def test_other_kinds_of_file_are_refused(inputs: Path, tmp_path: Path, no_work: None) -> None:
    features = inputs / "f.h5"
    with pytest.raises(OutputError, match="not a faiss index"):
        retrieve.build_index(features, features)
    with pytest.raises(OutputError, match="not a VLAD vocabulary"):
        vocab.build_vocabulary(inputs / "images", inputs / "db.index")
    with pytest.raises(OutputError, match="not a DELF PCA"):
        delf_pca.learn_delf_pca_from_features(features, features)
    names = names_path(tmp_path / "x.index")
    names.write_bytes((inputs / "images" / "im1.png").read_bytes())
    with pytest.raises(OutputError, match="not a text index names file"):
        retrieve.build_index(features, tmp_path / "x.index")
    weights = tmp_path / "vocab.pt"
    save_vocabulary(weights, np.eye(4, dtype=np.float32), {}, {})  # a vocabulary may be replaced
    with pytest.raises(pytest.fail.Exception):
        vocab.build_vocabulary(inputs / "images", weights)


def test_map_parts_of_another_kind_are_refused_before_work(inputs: Path, tmp_path: Path, no_work: None) -> None:
    photo = inputs / "images" / "im0.png"
    with pytest.raises(OutputError, match=f"{photo}: exists and is not a folder; --out must name a map folder"):
        map_build.build_map(inputs / "images", photo)
    files = MapFiles.of(tmp_path / "map")
    cases = {files.features: "not an HDF5 feature file", files.matches: "not an HDF5 match file",
             files.pairs: "not a text pairs file", files.index: "not a faiss index",
             files.database: "not a COLMAP database", files.vocabulary: "not a VLAD vocabulary"}
    files.root.mkdir()
    for part, message in cases.items():
        part.write_bytes(photo.read_bytes())
        with pytest.raises(OutputError, match=f"{part}: exists and is {message}"):
            map_build.build_map(inputs / "images", files.root)
        part.unlink()
    files.model.write_text("x")
    with pytest.raises(OutputError, match="sfm: exists and is not a folder"):
        map_build.build_map(inputs / "images", files.root)
    with pytest.raises(OutputError, match="--features must name a HDF5 feature"):
        map_build.build_map(inputs / "images", files.root, features=tmp_path)
    files.model.unlink()
    files.database.touch()  # the empty file of a run killed while creating the database blocks nothing
    RetrievalIndex.load(inputs / "db.index")  # the fixture's index is readable: the checks did not touch it
    with pytest.raises(pytest.fail.Exception):
        map_build.build_map(inputs / "images", files.root)


def test_consolidate_waits_for_no_writer(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    write_features(out, {"im0.png": {"keypoints": np.zeros((2, 2), np.float32)}})  # sharded: its master links out
    with output_lock(out):
        refused(visloc("consolidate", out), out, "another visloc job is writing it")
    shards.consolidate(out)


def test_the_match_picture_may_not_replace_an_input_or_another_kind(inputs: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("matched before refusing the picture")

    monkeypatch.setattr(match_pair, "_match", never)
    im0, im1 = inputs / "images" / "im0.png", inputs / "images" / "im1.png"
    before = im1.read_bytes()
    with pytest.raises(OutputError, match=f"{im1}: is an input image"):
        match_pair.match_images(im0, im1, out=im1)
    assert im1.read_bytes() == before
    with pytest.raises(OutputError, match="exists and is not a picture"):
        match_pair.match_images(im0, im1, out=inputs / "f.h5")
    with pytest.raises(pytest.fail.Exception):  # another picture may be replaced
        match_pair.match_images(im0, im1, out=inputs / "images" / "im2.png")


def test_export_refuses_a_photo_and_replaces_an_onnx_file(inputs: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("exported before refusing --onnx")

    monkeypatch.setattr(export, "_export", never)
    photo = inputs / "images" / "im0.png"
    with pytest.raises(OutputError, match=f"{photo}: exists and is not a ONNX file.*--onnx"):
        export.export_registered("hfnet", photo)
    onnx_file = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(onnx_file))
    with pytest.raises(pytest.fail.Exception):
        export.export_registered("hfnet", onnx_file)


def test_events_simulate_refuses_a_photo_even_with_overwrite(inputs: Path, tmp_path: Path) -> None:
    photo = inputs / "images" / "im1.png"
    before = photo.read_bytes()
    stamps = tmp_path / "t.txt"
    stamps.write_text("0\n0.1\n0.2\n")
    args = ["events", "simulate", "--frames", inputs / "images", "--timestamps", stamps]
    refused(visloc(*args, "--out", photo, "--overwrite"), photo, "not a visloc event (HDF5) file")
    assert photo.read_bytes() == before
    out = tmp_path / "ev.h5"
    with output_lock(out):
        refused(visloc(*args, "--out", out), out, "another visloc job is writing it")
    assert not out.exists()
    with pytest.raises(OutputError, match="not a visloc event"):
        simulate_traversal(tmp_path, "t0", inputs / "f.h5")


def test_an_eval_report_over_a_photo_is_refused_before_the_evaluation(inputs: Path, tmp_path: Path) -> None:
    photo = inputs / "images" / "im2.png"
    before = photo.read_bytes()
    missing = tmp_path / "missing.txt"  # read only after the check: the refusal names the photo, not these
    refused(visloc("eval", "localization", "--gt", missing, "--pred", missing, "--out", photo), photo,
            "not a text JSON report file")
    assert photo.read_bytes() == before


OPTION_CASES = [
    (["vocab", "I", "--out", "v.pt", "--clusters", "0"], "--clusters: expected an integer >= 1, got 0"),
    (["map", "build", "--images", "I", "--out", "m", "--num-pairs", "0"], "--num-pairs: expected an integer >= 1"),
    (["map", "build", "--images", "I", "--out", "m", "--cell-size", "0"], "--cell-size: expected a finite number > 0"),
    (["localize", "--map", "m", "--queries", "I", "--out", "p.txt", "--max-error", "0"], "--max-error: expected"),
    (["localize", "--map", "m", "--queries", "I", "--out", "p.txt", "--min-inlier-ratio", "2"],
     "--min-inlier-ratio: expected a value in [0, 1]"),
    (["match-dense", "--pairs", "p", "--images", "I", "--features", "f.h5", "--out", "m.h5", "--cell-size", "nan"],
     "--cell-size: expected a finite number > 0, got nan"),
    (["delf-pca", "f.h5", "--out", "p.npz", "--dim", "0"], "--dim: expected an integer >= 1"),
    (["search", "--index", "x", "--features", "f", "--out", "p.txt", "--rerank-threshold", "0"],
     "--rerank-threshold: expected a finite number > 0"),
    (["search", "--index", "x", "--features", "f", "--out", "p.txt", "--rerank-min-inliers", "-1"],
     "--rerank-min-inliers: expected an integer >= 0"),
    (["extract", "I", "--out", "f.h5", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["extract", "I", "--out", "f.h5", "--num-workers", "-1"], "--num-workers: expected an integer >= 0"),
    (["demo", "--out", "d", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["search", "--index", "x", "--features", "f", "--out", "p.txt", "--rerank-model", "planar"],
     "--rerank-model: expected one of homography, fundamental, affine, got 'planar'"),
    (["eval", "retrieval", "--gnd", "g.pkl", "--index", "x", "--features", "f", "--rerank-rule", "best"],
     "--rerank-rule: expected one of min-inliers, delg, got 'best'"),
    (["extract", "I", "--out", "f.h5", "--ray", "--shard-size", "0"], "--shard-size: expected an integer >= 1"),
    (["extract", "I", "--out", "f.h5", "--ray", "--ray-cpus", "0"], "--ray-cpus: expected an integer >= 1"),
    (["extract", "I", "--out", "f.h5", "--ray", "--gpus-per-task", "-1"],
     "--gpus-per-task: expected a finite number >= 0, got -1.0"),
    (["extract", "I", "--out", "f.h5", "--shard-size", "8"],
     "--ray-cpus, --cpus-per-task, --gpus-per-task and --shard-size need --ray"),
    (["extract", "I", "--out", "f.h5", "--image-list", "missing.txt"], "missing.txt: image list file not found"),
    (["eval", "pose", "--threshold", "-1"], "--threshold: expected a finite number > 0, got -1.0"),
    (["eval", "pose", "--step", "0"], "--step: expected an integer >= 1, got 0"),
    (["eval", "stereo", "--resize-max", "-5"], "--resize-max: expected an integer >= 0, got -5"),
]


@pytest.mark.parametrize(("args", "message"), OPTION_CASES,
                         ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else "")
def test_option_values_are_refused_under_the_commands_option_names(tmp_path: Path, args: list[str], message: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from visloc.cli import app

    monkeypatch.chdir(tmp_path)  # nothing is written: each refusal comes before the job starts
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and f"error: {message}" in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_folder_outputs_refuse_a_file_before_any_work(inputs: Path, tmp_path: Path) -> None:
    """demo, data world / bdd / gldv2 / revisitop: no network and no rendering before the refusal."""
    from typer.testing import CliRunner

    from visloc.cli import app

    photo = tmp_path / "photo.png"
    photo.write_bytes((inputs / "images" / "im0.png").read_bytes())
    before = photo.read_bytes()
    runner = CliRunner()
    for args in (["demo", "--out", photo], ["data", "world", "pairs", "--out", photo],
                 ["data", "bdd", "--labels", tmp_path / "l.json", "--images", tmp_path, "--out", photo],
                 ["data", "gldv2", "download", "--out", photo], ["data", "revisitop", "download", "--out", photo],
                 ["data", "gldv2", "prepare", tmp_path, "--out", photo]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and f"error: {photo}: exists and is not a folder" in result.output, result.output
    assert photo.read_bytes() == before and sorted(tmp_path.iterdir()) == [photo]
    images = inputs / "images"
    result = runner.invoke(app, ["data", "bdd", "--labels", str(tmp_path / "l.json"), "--images", str(images),
                                 "--out", str(images)])
    assert result.exit_code == 2 and "is the --images folder" in result.output


def test_live_never_records_over_its_source_or_a_photo(inputs: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from visloc.pipelines import live

    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("the video was opened before refusing --out")

    monkeypatch.setattr(live, "_run", never)
    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10, (64, 64))
    for i in range(3):
        writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
    writer.release()
    before = video.read_bytes()
    with pytest.raises(OutputError, match=f"{video}: is the input video"):
        live.run_live(video, live.LiveConf(out=video, show=False))
    assert video.read_bytes() == before
    photo = tmp_path / "photo.mp4"  # a photo under a video's name
    photo.write_bytes((inputs / "images" / "im0.png").read_bytes())
    with pytest.raises(OutputError, match=f"{photo}: exists and is not a video"):
        live.run_live(video, live.LiveConf(out=photo, show=False))
    other = tmp_path / "old.mp4"
    other.write_bytes(before)  # a video of its own may be replaced
    with pytest.raises(pytest.fail.Exception):
        live.run_live(video, live.LiveConf(out=other, show=False))


def test_a_folder_named_dot_is_locked_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with output_lock(Path(".")):
        assert (tmp_path / ".run.lock").is_file()
        with output_lock(Path("../run")):  # the same folder: re-entrant
            pass
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("kind", ["exhaustive", "sequential"])
def test_pairs_commands_hold_their_lock(inputs: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "pairs.txt"
    with output_lock(out):
        refused(visloc("pairs", kind, "--images", inputs / "images", "--out", out), out, "another visloc job")
    assert not out.exists()
