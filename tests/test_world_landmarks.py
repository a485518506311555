"""The ``landmarks`` world generator: GLDv2 classes (train), the Revisited test set (test), resume, bad confs."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pickle
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import visloc.data.world.base as base
from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.world import gldv2_layout as gl
from visloc.data.world.landmark_views import ViewConf
from visloc.data.world.landmarks import LandmarksConf, LandmarksFiles, generate_landmarks
from visloc.data.world.revisited import RevisitedConf
from visloc.eval.oxford_paris import RestrictedUnpickler, load_gnd

CITY = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=96, height=72,
                focal=75.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)
SMALL = LandmarksConf(city=CITY, views_per_landmark=2, min_views=1, pack=True, tar_size=16,
                      revisited=RevisitedConf(name="rtiny", query_landmarks=3, queries_per_landmark=2,
                                              db_views_per_landmark=4, distractor_views_per_landmark=1))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def train_set(tmp_path_factory: pytest.TempPathFactory) -> LandmarksFiles:
    return generate_landmarks(SMALL, tmp_path_factory.mktemp("train"), split="train", progress=False)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> LandmarksFiles:
    return generate_landmarks(SMALL, tmp_path_factory.mktemp("test"), split="test", progress=False)


def test_train_set_parses_as_gldv2(train_set: LandmarksFiles) -> None:
    root = train_set.root
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["id", "url", "landmark_id"] and len(rows) == train_set.num_images
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["id"]) for r in rows)
    for r in rows:  # <a>/<b>/<c>/<id>.jpg, a real JPEG of the city camera's size
        image = cv2.imread(str(root / r["id"][0] / r["id"][1] / r["id"][2] / f"{r['id']}.jpg"))
        assert image is not None and image.shape == (CITY.height, CITY.width, 3)
    tree = sorted(p.stem for p in root.glob("*/*/*/*.jpg"))
    assert tree == sorted(r["id"] for r in rows)  # no image on disk that the CSV does not list
    with open(root / "train_clean.csv", newline="") as f:
        clean = {int(c["landmark_id"]): c["images"].split(" ") for c in csv.DictReader(f)}
    by_class: dict[int, list[str]] = {}
    for r in rows:
        by_class.setdefault(int(r["landmark_id"]), []).append(r["id"])
    assert clean == by_class and len(clean) == train_set.num_classes >= 10  # every image of its class
    record = yaml.safe_load((root / "world.yaml").read_text())
    assert (record["kind"], record["split"], record["layout"]) == ("landmarks", "train", "gldv2")
    assert not (root / ".views").exists() and not (root / base.PENDING).exists()


def test_tars_verify_with_hashlib_and_tarfile(train_set: LandmarksFiles) -> None:
    root, members = train_set.root, {}
    assert [t.name for t in train_set.tars] == [gl.tar_name(k) for k in range(-(-train_set.num_images // 16))]
    for k, tar_path in enumerate(train_set.tars):
        md5, name = (root / gl.md5_name(k)).read_text().rstrip("\n").split("  ")
        assert name == tar_path.name and md5 == hashlib.md5(tar_path.read_bytes()).hexdigest()
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                assert m.isfile() and not m.name.startswith(("/", "..")) and ".." not in m.name
                members[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    assert members == {gl.image_relpath(p.stem): p.read_bytes() for p in root.glob("*/*/*/*.jpg")}
    reader = gl.Gldv2Train.open(root)
    assert reader.labels() == {r.id: r.landmark_id for r in reader.rows}


def test_same_seed_same_bytes_other_seed_differs(train_set: LandmarksFiles, tmp_path: Path) -> None:
    again = generate_landmarks(SMALL, tmp_path / "again", split="train", progress=False)
    assert _files(again.root) == _files(train_set.root)
    other = dataclasses.replace(SMALL, city=dataclasses.replace(CITY, seed=1))
    moved = generate_landmarks(other, tmp_path / "other", split="train", progress=False)
    assert (moved.root / "train.csv").read_bytes() != (train_set.root / "train.csv").read_bytes()
    assert not set(_files(moved.root)) & {k for k in _files(train_set.root) if k.endswith(".jpg")}


def _places(root: Path) -> set[int]:
    with open(root / "views.csv", newline="") as f:
        return {int(p) for r in csv.DictReader(f) for p in r["places"].split()}


def test_train_and_test_sets_share_no_place(train_set: LandmarksFiles, test_set: LandmarksFiles) -> None:
    city = build_city(CITY)
    train_places, test_places = _places(train_set.root), _places(test_set.root)
    assert {city.places[p].split for p in train_places} == {"train"}
    assert {city.places[p].split for p in test_places} == {"test"}
    with open(train_set.root / "train.csv", newline="") as f:
        classes = {int(r["landmark_id"]) for r in csv.DictReader(f)}
    test_landmarks = {city.places[p].landmark_id for p in test_places} - {-1}
    assert classes and test_landmarks and not classes & test_landmarks


def test_a_revisited_set_of_the_val_split_shows_only_val_places(test_set: LandmarksFiles, tmp_path: Path) -> None:
    conf = dataclasses.replace(SMALL, layout="revisited")
    val = generate_landmarks(conf, tmp_path / "val", split="val", progress=False)
    assert val.layout == "revisited" and val.index.name == "gnd_rtiny.pkl" and val.num_classes >= 1
    city = build_city(CITY)
    assert {city.places[p].split for p in _places(val.root)} == {"val"}
    gnd = load_gnd(val.index)
    assert gnd.is_revisited and gnd.qimlist and all(len(g["easy"]) + len(g["hard"]) for g in gnd.gnd)
    assert not {p.name for p in (val.root / "jpg").iterdir()} & {p.name for p in (test_set.root / "jpg").iterdir()}
    with pytest.raises(ConfError, match=r"^LandmarksConf.layout: must be auto, gldv2 or revisited, got 'rev'$"):
        dataclasses.replace(SMALL, layout="rev")  # pyright: ignore[reportArgumentType]  # the bad value on purpose


def test_gnd_loads_through_the_restricted_unpickler(test_set: LandmarksFiles) -> None:
    path = test_set.root / "gnd_rtiny.pkl"
    assert test_set.index == path and test_set.layout == "revisited"
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f).load()
    assert set(data) == {"imlist", "qimlist", "gnd"} and data == pickle.loads(path.read_bytes())
    gt = load_gnd(path)
    assert gt.is_revisited and len(gt.qimlist) >= 3 and len(gt.imlist) >= 12
    for name in (*gt.imlist, *gt.qimlist):
        assert (test_set.root / "jpg" / f"{name}.jpg").is_file()
    assert sorted(p.stem for p in (test_set.root / "jpg").iterdir()) == sorted((*gt.imlist, *gt.qimlist))
    distractors = {n.split("_")[1] for n in gt.imlist} - {q.split("_")[1][1:] for q in gt.qimlist}
    assert distractors  # database views of landmarks without queries
    for q, g in zip(gt.qimlist, gt.gnd, strict=True):
        assert set(g) == {"bbx", "easy", "hard", "junk"}
        x0, y0, x1, y1 = g["bbx"]
        assert 0 <= x0 < x1 <= CITY.width and 0 <= y0 < y1 <= CITY.height
        lists = [set(g[k].tolist()) for k in ("easy", "hard", "junk")]
        assert not (lists[0] & lists[1] or lists[0] & lists[2] or lists[1] & lists[2]), q
        assert all(0 <= j < len(gt.imlist) for s in lists for j in s) and lists[0] | lists[1]
        own = {j for j, n in enumerate(gt.imlist) if n.split("_")[1] == q.split("_")[1][1:]}
        assert (lists[0] | lists[1]) & own  # views drawn for the query's landmark among its positives


def test_eval_retrieval_reads_the_test_set(test_set: LandmarksFiles, tmp_path: Path) -> None:
    gt = load_gnd(test_set.index)
    scores = np.zeros((len(gt.qimlist), len(gt.imlist)))
    for i, g in enumerate(gt.gnd):  # a perfect ranking: positives first
        scores[i, g["easy"]], scores[i, g["hard"]], scores[i, g["junk"]] = 3.0, 2.0, 1.0
    np.save(tmp_path / "scores.npy", scores)
    result = CliRunner().invoke(app, ["eval", "retrieval", "--gnd", str(test_set.index), "--scores",
                                      str(tmp_path / "scores.npy"), "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["results"]["medium"]["mAP"] == pytest.approx(1.0)


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("split", ["train", "test"])
def test_interrupted_run_resumes_to_the_same_bytes(split: str, train_set: LandmarksFiles, test_set: LandmarksFiles,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = base.ItemWriter.write_image
    calls = []

    def dying(self: base.ItemWriter, name: str, image: np.ndarray, **kw: object) -> Path:
        if len(calls) == 5:
            raise _Killed("killed")
        calls.append(name)
        return written(self, name, image, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(base.ItemWriter, "write_image", dying)
    with pytest.raises(_Killed):
        generate_landmarks(SMALL, tmp_path, split=split, progress=False)
    assert (tmp_path / base.PENDING).is_file() and not (tmp_path / base.RECORD).exists()
    monkeypatch.setattr(base.ItemWriter, "write_image", written)
    files = generate_landmarks(SMALL, tmp_path, split=split, progress=False)
    assert files.summary.already_done == 5
    assert _files(tmp_path) == _files((train_set if split == "train" else test_set).root)
    again = generate_landmarks(SMALL, tmp_path, split=split, progress=False)  # finished: returns at once
    assert (again.summary.done, again.num_images) == (0, files.num_images)


def test_bad_confs_fail_at_once_naming_the_field(tmp_path: Path) -> None:
    for kwargs, field in (({"views_per_landmark": 0}, "LandmarksConf.views_per_landmark"),
                          ({"conditions": ("day", "sunny")}, "LandmarksConf.conditions"),
                          ({"min_landmark_fraction": 1.5}, "LandmarksConf.min_landmark_fraction"),
                          ({"revisited": RevisitedConf(db_conditions=("nite",))}, "LandmarksConf.revisited.db_condit")):
        with pytest.raises(ConfError, match=rf"^{re.escape(field)}"):
            LandmarksConf(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfError, match=r"^ViewConf.angle_deg: "):
        ViewConf(angle_deg=95.0)
    with pytest.raises(ConfError, match=r"^RevisitedConf.name: "):
        RevisitedConf(name="a b")
    budget = dataclasses.replace(SMALL, max_frames=10)
    with pytest.raises(ConfError, match=r"^LandmarksConf.views_per_landmark: would write \d+ frames, more than "
                                        r"max_frames = 10$"):
        generate_landmarks(budget, tmp_path / "b", split="train", progress=False)
    with pytest.raises(ConfError, match=r"^LandmarksConf.revisited: would write"):
        generate_landmarks(budget, tmp_path / "b", split="test", progress=False)
    assert not (tmp_path / "b").exists()  # nothing written


def test_cli_generates_and_names_bad_fields(tmp_path: Path) -> None:
    city = [f"city.{k}={v}" for k, v in (("num_streets_x", 2), ("num_streets_y", 4), ("block_length_m", 40),
                                         ("block_depth_m", 30), ("width", 64), ("height", 48), ("focal", 50),
                                         ("split", "[0.34,0.33,0.33]"), ("px_per_m", 6))]
    sets = [x for kv in (*city, "views_per_landmark=1", "min_views=1") for x in ("--set", kv)]
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "world", "landmarks", "--split", "val", "--seed", "3", "--out",
                             str(tmp_path / "val"), "--quiet", *sets])
    assert ok.exit_code == 0, ok.output
    assert "world landmarks (val): " in ok.output and (tmp_path / "val" / "train.csv").is_file()
    assert yaml.safe_load((tmp_path / "val" / "world.yaml").read_text())["seed"] == 3
    bad = runner.invoke(app, ["data", "world", "landmarks", "--out", str(tmp_path / "bad"), "--set",
                              "views_per_landmark=0"])
    assert bad.exit_code == 2 and "LandmarksConf.views_per_landmark: must be >= 1" in bad.output


def test_a_plane_at_the_image_edge_with_a_one_pixel_box_renders() -> None:
    """Views of small cities meet planes whose drawing box is 1 x 1 pixel (cv2.compare once failed on those)."""
    from visloc.data.scene.render import intrinsics, render
    from visloc.data.scene.world import World, make_plane
    from visloc.io.poses import CameraPose

    # pixels x, y in [-0.4, -0.02]: the box is pixel (0, 0) alone (within the renderer's sub-pixel margin)
    plane = make_plane("dot", (-8.8, -8.8, 20.0), (1, 0, 0), (0, 1, 0), (0.76, 0.76),
                       np.full((4, 4, 3), 200, np.uint8), place_id=0)
    frame = render(World(CITY, (plane,)), intrinsics(10.0, 9, 9),  # type: ignore[arg-type]
                   CameraPose(np.eye(3), np.zeros(3)), size=(9, 9))
    assert frame.place_id.shape == (9, 9) and (frame.place_id == 0).sum() == 0  # no pixel centre inside
