"""In-process checks of the hardening pieces: writer locks, staged-part records, bounded readers."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from visloc.conf import ConfError
from visloc.data.oxford_paris import RestrictedUnpickler
from visloc.io import parts, shards
from visloc.io.features_h5 import list_feature_names, stage_features
from visloc.io.locks import lock_path, output_lock
from visloc.io.names import ImageNameError
from visloc.io.outputs import OutputError, check_h5_output, check_text_output
from visloc.io.pairs import sequential_pairs, write_pairs
from visloc.localization.colmap_files import ModelFileError, check_binary_model, read_reconstruction
from visloc.retrieval.faiss_files import FaissFileError, check_index_file
from visloc.retrieval.index import RetrievalIndex
from visloc.retrieval.index_conf import IndexConf


def _feats(n: int) -> dict[str, np.ndarray]:
    return {"keypoints": np.zeros((n, 2), np.float32), "descriptors": np.zeros((n, 4), np.float32)}


def test_lock_is_reentrant_in_a_process_and_removed_after(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "f.h5"
    with output_lock(out), output_lock(out):
        assert lock_path(out).is_file()
    assert not lock_path(out).exists()


def test_a_commit_keeps_parts_staged_after_it_listed_them(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    stage_features(out, "a", _feats(2))
    stage_features(out, "b", _feats(3))

    def write(fd, name, arrays):  # noqa: ANN001, ANN202 - a commit's writer that sees a part staged meanwhile
        if name == "a":
            stage_features(out, "late", _feats(1))
        parts.write_group(fd, name, arrays)

    assert shards.commit(out, write) == 2
    assert list_feature_names(out) == ["a", "b"] and parts.staged_names(out) == {"late"}
    assert shards.commit(out, parts.write_group) == 1
    assert list_feature_names(out) == ["a", "b", "late"] and not parts.parts_dir(out).exists()


def test_a_record_without_parts_blocks_nothing(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    parts.claim(out, '{"name": "aliked-n16", "conf": {}}')
    parts.check_staged(out, '{"name": "sift", "conf": {}}')  # no part: no refusal
    stage_features(out, "a", _feats(1))
    with pytest.raises(parts.StagedConfError, match=r"f\.h5\.parts: 1 items staged .* with aliked-n16"):
        parts.check_staged(out, '{"name": "sift", "conf": {}}')
    with pytest.raises(parts.StagedConfError, match="another conf of aliked-n16"):
        parts.check_staged(out, '{"name": "aliked-n16", "conf": {"x": 1}}')
    parts.check_staged(out, '{"conf": {}, "name": "aliked-n16"}')


def test_a_run_failing_at_its_first_image_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from visloc.pipelines import extract

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    out = tmp_path / "f.h5"

    def broken(*args: object, **kwargs: object) -> None:
        raise ConfError("sift: a conf error found at the first image")

    with monkeypatch.context() as m:
        m.setattr(extract, "extract_each", broken)
        with pytest.raises(ConfError):
            extract.extract_features(images, out, extractor="sift", progress=False)
    assert not out.exists() and not parts.parts_dir(out).exists() and not lock_path(out).exists()
    summary = extract.extract_features(images, out, extractor="orb", progress=False)  # another conf: not blocked
    assert summary.done == 1 and list_feature_names(out) == ["a.png"]


def test_output_kinds(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("a b\n")
    check_text_output(text, "pairs")
    binary = tmp_path / "x.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(OutputError, match="not a text pairs file"):
        check_text_output(binary, "pairs")
    with pytest.raises(OutputError, match="not an HDF5 feature file"):
        check_h5_output(text, "features")
    with pytest.raises(OutputError, match="is a directory"):
        check_h5_output(tmp_path, "matches")


def test_pairs_refuse_whitespace_and_clamp_windows(tmp_path: Path) -> None:
    with pytest.raises(ImageNameError, match=r"1 image names contain whitespace.*'b c'"):
        write_pairs(tmp_path / "p.txt", [("a", "b c")])
    assert not (tmp_path / "p.txt").exists()
    names = [f"{i}" for i in range(4)]
    assert sequential_pairs(names, window=10**9, loop=True) == sequential_pairs(names, window=3)
    assert len(sequential_pairs(["a"], window=10**9, loop=True)) == 0


def test_unpickler_bounds() -> None:
    def load(obj: object) -> object:
        return RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=2))).load()

    ok = {"imlist": [f"{i}.jpg" for i in range(100)], "gnd": [{"easy": np.arange(3), "bbx": [1.0, 2.0, 3.0, 4.0]}]}
    assert load(ok)["imlist"] == ok["imlist"]
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(pickle.UnpicklingError, match="nested deeper than 16"):
        load(deep)
    wide: list = [0]
    for _ in range(10):
        wide = [wide] * 10
    with pytest.raises(pickle.UnpicklingError, match="more than 20000000 elements"):
        load(wide)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(pickle.UnpicklingError, match="contains itself"):
        load(cyclic)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sfm")
    options = pycolmap.SyntheticDatasetOptions()
    options.num_points3D = 60
    pycolmap.synthesize_dataset(options).write_binary(str(folder))
    return folder


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"])
def test_every_cut_of_a_colmap_file_is_refused(model: Path, tmp_path: Path, name: str) -> None:
    assert read_reconstruction(model).num_points3D() == 60
    folder = tmp_path / "m"
    folder.mkdir()
    for path in model.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    good = (model / name).read_bytes()
    for size in sorted({*range(0, len(good), max(len(good) // 40, 1)), len(good) - 1}):
        (folder / name).write_bytes(good[:size])
        with pytest.raises(ModelFileError, match=name):
            check_binary_model(folder)
    (folder / name).write_bytes(good + b"\0")
    with pytest.raises(ModelFileError, match="1 bytes after the last record"):
        check_binary_model(folder)


def test_a_forged_colmap_count_is_refused_before_reading(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for path in model.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    data = bytearray((model / "points3D.bin").read_bytes())
    data[51:59] = (1 << 40).to_bytes(8, "little")  # the first point's track length
    (folder / "points3D.bin").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="a track of 1099511627776 elements"):
        read_reconstruction(folder)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_faiss_files_walk_and_cuts(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    conf = IndexConf(kind=kind, nlist=4, m=4, nbits=4) if kind == "ivfpq" else IndexConf(kind=kind)
    path = RetrievalIndex.build([f"{i}" for i in range(300)], x, conf).save(tmp_path / "db.index")
    check_index_file(path)
    good = path.read_bytes()
    for size in range(0, len(good), max(len(good) // 30, 1)):
        path.write_bytes(good[:size])
        with pytest.raises(FaissFileError, match="not a readable faiss index"):
            check_index_file(path)


BAD_CONFS = [
    ("orb", "n_levels=0", "ORBConf.n_levels"), ("orb", "scale_factor=1.0", "ORBConf.scale_factor"),
    ("orb", "max_num_keypoints=-1", "ORBConf.max_num_keypoints"), ("orb", "fast_threshold=-3", "fast_threshold"),
    ("sift", "n_octave_layers=0", "SIFTConf.n_octave_layers"), ("sift", "max_num_keypoints=0", "max_num_keypoints"),
    ("sift", "contrast_threshold=-1", "contrast_threshold"), ("sift", "edge_threshold=0", "edge_threshold"),
    ("sift", "resize_max=-1", "SIFTConf.resize_max"), ("sift", "resize_to=[4,4]", "SIFTConf.resize_to"),
    ("aliked-n16", "max_num_keypoints=-7", "ALIKEDConf.max_num_keypoints"),
    ("aliked-n16", "detection_threshold=2", "detection_threshold"), ("disk", "nms_window=4", "DISKConf.nms_window"),
    ("xfeat", "max_num_keypoints=-1", "XFeatConf.max_num_keypoints"), ("hfnet", "nms_radius=-1", "nms_radius"),
    ("hfnet", "detection_threshold=nan", "detection_threshold"), ("vlad-aliked", "num_clusters=0", "num_clusters"),
    ("delg", "iou_threshold=0", "iou_threshold"), ("delg", "scales=[0.5,-1]", "scales"),
    ("xfeat-onnx", "num_threads=-2", "XFeatOnnxConf.num_threads"),
]
BAD_MATCHER_CONFS = [
    ("nn-ratio", "ratio_threshold=1.5", "NNConf.ratio_threshold"), ("lightglue", "filter_threshold=-0.1", "filter"),
    ("lightglue", "depth_confidence=0", "LightGlueConf.depth_confidence"), ("loftr", "threshold=3", "threshold"),
    ("xfeat-star", "max_num_keypoints=2", "max_num_keypoints"), ("loftr-coarse", "size=[4,300]", "size"),
]


@pytest.mark.parametrize(("name", "override", "field"), BAD_CONFS + BAD_MATCHER_CONFS)
def test_out_of_range_conf_values_are_refused_where_the_conf_is_built(
        name: str, override: str, field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from visloc.registry import EXTRACTORS, MATCHERS

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an out-of-range value reached OpenCV")

    monkeypatch.setattr(cv2.ORB, "create", never)
    monkeypatch.setattr(cv2.SIFT, "create", never)
    registry = EXTRACTORS if name in EXTRACTORS else MATCHERS
    with pytest.raises(ConfError) as info:
        registry.build(name, [override])
    message = str(info.value)
    assert field in message and "\n" not in message and override.split("=")[1].split(",")[-1].strip("[]") in message


def test_the_unlimited_budget_and_defaults_build() -> None:
    from visloc.registry import EXTRACTORS, MATCHERS

    for registry in (EXTRACTORS, MATCHERS):
        for name in registry.names():
            registry.conf(name)  # every registered default is in range
    sift = EXTRACTORS.build("sift", ["max_num_keypoints=-1"])
    image = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    assert len(sift(torch.from_numpy(image))[0].keypoints) > 0


def test_camera_focal_lengths_must_be_positive(tmp_path: Path) -> None:
    from visloc.io.poses import PoseFileError, read_cameras

    path = tmp_path / "cameras.txt"
    path.write_text("ok.jpg SIMPLE_PINHOLE 640 480 500 320 240\nbad.jpg PINHOLE 640 480 500 0 320 240\n")
    with pytest.raises(PoseFileError, match=r"cameras\.txt:2: Camera: focal length must be > 0, got 0"):
        read_cameras(path)
    path.write_text("bad.jpg SIMPLE_RADIAL 640 480 nan 320 240 0\n")
    with pytest.raises(PoseFileError, match=r"cameras\.txt:1: Camera: parameters must be finite"):
        read_cameras(path)


def test_an_opencv_error_on_one_image_is_recorded_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from visloc.features.opencv import SIFT
    from visloc.pipelines.extract import extract_features

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, side in enumerate((64, 64, 80)):
        cv2.imwrite(str(folder / f"im{i}.png"), np.random.default_rng(i).integers(0, 255, (side, side), np.uint8))
    one = SIFT._one

    def failing(self: SIFT, image: torch.Tensor):  # noqa: ANN202 - OpenCV fails on the 80 px image only
        if image.shape[-1] == 80:
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) !img.empty() in function 'detect'")
        return one(self, image)

    monkeypatch.setattr(SIFT, "_one", failing)
    summary = extract_features(folder, tmp_path / "f.h5", extractor="sift", progress=False)
    assert summary.done == 2 and [name for name, _ in summary.failed] == ["im2.png"]
    assert summary.failed[0][1].startswith("OpenCV error: ") and "!img.empty()" in summary.failed[0][1]
    assert list_feature_names(tmp_path / "f.h5") == ["im0.png", "im1.png"]


def test_a_cut_prediction_cache_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    from visloc.errors import InputError
    from visloc.eval.predictions import cached_keys, read_predictions

    cache = tmp_path / "method.h5"
    parts.write_part(cache, "a.png/b.png", {"matches": np.zeros(3, np.int64)})
    parts.merge_parts(cache, parts.write_group, {})
    assert cached_keys(cache) == {"a.png/b.png"}
    size = cache.stat().st_size
    with open(cache, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(InputError, match=r"method\.h5: the prediction cache cannot be read .* delete the file"):
        read_predictions(cache, "a.png/b.png")
    assert cached_keys(cache) == set()  # predicted afresh
    assert not cache.exists() and (tmp_path / "method.h5.damaged").stat().st_size == size // 2


def test_text_inputs_that_are_not_utf8_or_are_folders_give_one_line(tmp_path: Path) -> None:
    from visloc.data.world.drive_io import read_frames_txt
    from visloc.errors import InputError
    from visloc.io.pairs import PairsError, read_pairs
    from visloc.io.poses import PoseFileError, read_cameras, read_poses

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9.jpg b.jpg\n".encode("latin-1"))
    with pytest.raises(PairsError, match=r"latin1.txt: not a UTF-8 text pairs file \(byte 3: b'\\xe9'\)"):
        read_pairs(latin)
    for reader in (read_poses, read_cameras):
        with pytest.raises(PoseFileError, match="latin1.txt: not a UTF-8 text file"):
            reader(latin)
        with pytest.raises(PoseFileError, match="is a folder, not a file"):
            reader(tmp_path)
    with pytest.raises(InputError, match="latin1.txt: not a UTF-8 text file"):
        read_frames_txt(latin)
    with pytest.raises(PairsError, match="nope.txt: pairs file not found"):
        read_pairs(tmp_path / "nope.txt")


def test_localize_counts_are_checked_under_the_commands_own_option_names(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visloc.cli import app

    runner = CliRunner()
    for args, option in ((["-k", "0"], "--top-k"), (["--max-places", "0"], "--max-places"),
                         (["--min-inliers", "-3"], "--min-inliers")):
        res = runner.invoke(app, ["localize", "--map", str(tmp_path), "--queries", str(tmp_path), "--out",
                                  str(tmp_path / "p.txt"), *args])
        assert res.exit_code == 2 and f"error: {option}: expected an integer >= 1" in res.output, res.output
        assert "LocalizerConf" not in res.output
    res = runner.invoke(app, ["demo", "-k", "0", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "error: --top-k: expected an integer >= 1" in res.output
