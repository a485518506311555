"""End-to-end revisitop evaluation (``pipelines.eval_landmarks``, ``visloc eval retrieval --dataset``).

A constructed dataset whose ranking is known by hand: a probe extractor's global descriptor is the image's
mean colour, so solid-colour database images rank by their colour's cosine with the query's cropped box;
its one local keypoint sits at the input's last pixel, which shows the resize each crop got. Then the
world's test set with ``hfnet`` end to end.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.errors import DatasetError
from visloc.errors import InputError
from visloc.features.base import Extractor, input_size
from visloc.io import features_h5
from visloc.io.sources import ResizeSpec, crop_target_size
from visloc.pipelines import eval_landmarks as el
from visloc.registry import EXTRACTORS, Capabilities
from visloc.types import Features

runner = CliRunner()
RED, GREEN = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
DB_COLOURS = [(1, 0, 0), (1, 0.3, 0), (1, 0.6, 0), (1, 1, 0), (0.4, 1, 0), (0, 1, 0)]  # cosine with red: decreasing
GND = {"easy": [1], "hard": [3, 4], "junk": [0], "bbx": [32.2, 15.6, 96.0, 79.5]}  # -> [32, 16, 96, 80]


@dataclass(frozen=True)
class ProbeConf:
    resize_max: int | None = None
    local: bool = True


class Probe(Extractor):
    """Global: the mean colour; local: one keypoint at the input's last pixel, descriptor = the mean colour."""

    def forward(self, image: torch.Tensor) -> list[Features]:
        out = []
        for im in image:
            g = im.mean((1, 2))
            g = g / g.norm()
            w, h = input_size(image)
            kp = torch.tensor([[w - 1.0, h - 1.0]]) if self.conf.local else torch.zeros(0, 2)
            desc = g[None] if self.conf.local else torch.zeros(0, 0)
            out.append(Features(kp, desc, torch.ones(len(kp)), (w, h), g))
        return out


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(EXTRACTORS, "_entries", dict(EXTRACTORS._entries))  # registered for this test only
    for name, local in (("probe", True), ("probe-global", False)):
        EXTRACTORS.register(name, ProbeConf(local=local), Probe, "test probe", kind="local+global",
                            capabilities=lambda c: Capabilities(frozenset({"global", "local"} if c.local else
                                                                          {"global"})))


def _jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path, quality=98, subsampling=0)


@pytest.fixture
def tiny(tmp_path):
    """One 128x96 query (a red box on green) and six solid database images, widths 64 + 16 j."""
    root = tmp_path / "tiny"
    query = np.tile(np.array(GREEN), (96, 128, 1))
    query[16:80, 32:96] = RED
    _jpg(root / "jpg" / "q0.jpg", query)
    for j, c in enumerate(DB_COLOURS):
        _jpg(root / "jpg" / f"d{j}.jpg", np.tile(np.array(c, float), (48, 64 + 16 * j, 1)))
    gnd = {"imlist": [f"d{j}" for j in range(6)], "qimlist": ["q0"], "gnd": [GND]}
    (root / "gnd_tiny.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    return root


def _maps(report):
    return {k: v.mean_ap for k, v in report.results.items()}


def test_exact_map_cropped_queries(probe, tiny, tmp_path):
    report = el.evaluate_landmarks("tiny", tiny, extractor="probe", cache_dir=tmp_path / "c", progress=False)
    # ranking [0 1 2 3 4 5]. medium (ok 1 3 4, junk 0): positives at 0, 2, 3 -> AP 55/72;
    # hard (ok 3 4, junk 0 1): at 1, 2 -> 5/12; easy (ok 1, junk 0 3 4): at 0 -> 1
    assert _maps(report) == pytest.approx({"easy": 1.0, "medium": 55 / 72, "hard": 5 / 12})
    assert report.verify is None and report.failed == () and (report.num_queries, report.num_database) == (1, 6)
    qfile = next((tmp_path / "c" / "retrieval" / "tiny").glob("probe-*/queries-*.h5"))
    f = features_h5.load_features(qfile, "q0.jpg")
    assert f.image_size == (64, 64)  # the crop [32, 16, 96, 80] of int(round(bbx))
    np.testing.assert_allclose(f.keypoints.numpy(), [[63, 63]])  # not resized
    # uncropped, the query is 2/3 green: the ranking turns over to [4 3 5 2 1 0] (why revisitop crops):
    # easy: positive 1 at 2 once junk is out -> 1/6; medium: at 0, 1, 4 -> 51/60; hard: at 0, 1 -> 1
    uncropped = {**GND, "bbx": [0, 0, 128, 96]}
    (tiny / "gnd_tiny.pkl").write_bytes(pickle.dumps({"imlist": [f"d{j}" for j in range(6)], "qimlist": ["q0"],
                                                      "gnd": [uncropped]}, protocol=2))
    full = el.evaluate_landmarks("tiny", tiny, extractor="probe", cache_dir=tmp_path / "c", progress=False)
    assert _maps(full) == pytest.approx({"easy": 1 / 6, "medium": 51 / 60, "hard": 1.0})


def test_crop_keeps_the_scale_of_the_resized_full_image(probe, tiny, tmp_path):
    assert crop_target_size(ResizeSpec(64), (128, 96), (64, 64)) == (32, 32)  # limit 64 * 64 / 128 = 32
    assert crop_target_size(ResizeSpec(1024), (128, 96), (64, 64)) == (64, 64)  # full image not resized
    assert crop_target_size(ResizeSpec(100), (200, 100), (150, 40)) == (75, 20)
    assert crop_target_size(ResizeSpec(resize_to=(64, 48)), (128, 96), (64, 32)) == (32, 16)
    el.evaluate_landmarks("tiny", tiny, extractor="probe", overrides=["resize_max=64"], cache_dir=tmp_path / "c",
                          progress=False)
    qfile = next((tmp_path / "c" / "retrieval" / "tiny").glob("probe-*/queries-*.h5"))
    f = features_h5.load_features(qfile, "q0.jpg")
    assert f.image_size == (64, 64)
    np.testing.assert_allclose(f.keypoints.numpy(), [[62.5, 62.5]])  # input 32x32: (31 + 0.5) * 2 - 0.5


@pytest.fixture
def table(monkeypatch):
    """Inliers by database image width (64 + 16 j): j=0 (junk) 100, 1: 10, 3: 50, 4: 3, 5: 80 (past the top)."""
    inliers = {0: 100, 1: 10, 2: 0, 3: 50, 4: 3, 5: 80}
    calls = []

    def fake(query, db, conf):
        j = (db.image_size[0] - 64) // 16
        calls.append(j)
        return inliers[j]

    monkeypatch.setattr(el, "verify_pair", fake)
    return calls


def test_exact_map_after_verification_per_protocol(probe, tiny, tmp_path, table):
    report = el.evaluate_landmarks("tiny", tiny, extractor="probe", rerank=3, cache_dir=tmp_path / "c",
                                   progress=False)
    # medium shortlist (junk 0 out) [1 2 3] -> [3 1 0 2 4 5]: positives at 0 1 3 -> 65/72;
    # hard shortlist (junk 0 1 out) [2 3 4] -> [3 4 0 1 2 5]: positives at 0 1 -> 1
    maps = _maps(report)
    assert maps["medium_after_gv"] == pytest.approx(65 / 72) and maps["hard_after_gv"] == pytest.approx(1.0)
    assert maps["medium"] == pytest.approx(55 / 72) and sorted(table) == [1, 2, 3, 4] and report.verified_pairs == 4
    report = el.evaluate_landmarks("tiny", tiny, extractor="probe", rerank=3, rerank_rule="min-inliers",
                                   rerank_min_inliers=20, cache_dir=tmp_path / "c", progress=False)
    # hard: only 3 (50 inliers) moves -> [3 0 1 2 4 5]: positives at 0 2 -> 19/24
    assert _maps(report)["hard_after_gv"] == pytest.approx(19 / 24)
    assert _maps(report)["medium_after_gv"] == pytest.approx(65 / 72)
    report = el.evaluate_landmarks("tiny", tiny, extractor="probe-global", rerank=3, rerank_extractor="probe",
                                   cache_dir=tmp_path / "c", progress=False)
    assert _maps(report)["hard_after_gv"] == pytest.approx(1.0) and report.rerank_extractor == "probe"
    with pytest.raises(InputError, match="probe-global gives no local features; name one with --rerank-extractor"):
        el.evaluate_landmarks("tiny", tiny, extractor="probe-global", rerank=3, cache_dir=tmp_path / "c",
                              progress=False)


def test_cli_dataset_report(probe, tiny, tmp_path, table):
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "retrieval", "--dataset", "tiny", "--root", str(tiny), "--extractor", "probe",
                                 "--rerank", "3", "--cache", str(tmp_path / "c"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny (gnd_tiny.pkl: 1 cropped queries, 6 database images), probe global descriptors, top 3" in result.stdout
    assert "medium_after_gv (1 queries" in result.stdout and "mAP=90.28" in result.stdout  # 65/72
    data = json.loads(out.read_text())
    assert data["rerank"] == 3 and data["verify"]["rule"] == "delg" and data["verify"]["residual"] == 20.0
    assert set(data["results"]) == {"easy", "medium", "hard", "medium_after_gv", "hard_after_gv"}
    assert data["results"]["hard"]["mAP"] == pytest.approx(5 / 12)


@pytest.mark.parametrize("case", ["no-bbx", "outside", "no-gnd", "query-missing"])
def test_bad_datasets_one_line(probe, tiny, tmp_path, case):
    gnd = {"imlist": [f"d{j}" for j in range(6)], "qimlist": ["q0"], "gnd": [dict(GND)]}
    expected = {"no-bbx": "gnd_tiny.pkl: query 'q0' has no 'bbx'",
                "outside": "gnd_tiny.pkl: query 'q0': box [32, 16, 130, 80] is empty or outside the 128x96 image",
                "no-gnd": "gnd_tiny.pkl: ground-truth file not found",
                "query-missing": "q0.jpg: query image of gnd_tiny.pkl missing or unreadable"}[case]
    if case == "no-bbx":
        del gnd["gnd"][0]["bbx"]
    if case == "outside":
        gnd["gnd"][0]["bbx"] = [32, 16, 130, 80]
    (tiny / "gnd_tiny.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    if case == "no-gnd":
        (tiny / "gnd_tiny.pkl").unlink()
    if case == "query-missing":
        (tiny / "jpg" / "q0.jpg").unlink()
    with pytest.raises(DatasetError, match=re.escape(expected)):
        el.load_revisitop("tiny", tiny)
    result = runner.invoke(app, ["eval", "retrieval", "--dataset", "tiny", "--root", str(tiny), "--extractor", "probe",
                                 "--cache", str(tmp_path / "c")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_cli_flags_reach_the_code(fake_pipeline, tmp_path):
    from visloc.errors import InputError as Stop

    def stop(_):
        raise Stop("stop here")

    calls = fake_pipeline(el, "evaluate_landmarks", stop)
    result = runner.invoke(app, ["eval", "retrieval", "--dataset", "roxford5k", "--root", str(tmp_path), "--extractor",
                                 "hfnet", "--set", "max_num_keypoints=500", "--rerank", "100", "--rerank-rule",
                                 "min-inliers", "--rerank-extractor", "aliked-n16", "--set-rerank-extractor",
                                 "max_num_keypoints=300", "--rerank-distance", "0.9", "--rerank-ratio", "0.8",
                                 "--rerank-threshold", "15", "--rerank-min-inliers", "9", "--k", "1", "--k", "3",
                                 "--cache", str(tmp_path / "c"), "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr == "error: stop here\n", result.output
    assert calls == [{"dataset": "roxford5k", "root": tmp_path, "extractor": "hfnet",
                      "overrides": ("max_num_keypoints=500",), "rerank": 100, "rerank_rule": "min-inliers",
                      "rerank_extractor": "aliked-n16", "rerank_overrides": ("max_num_keypoints=300",),
                      "rerank_distance": 0.9, "rerank_ratio": 0.8, "rerank_residual": 15.0, "rerank_min_inliers": 9,
                      "kappas": (1, 3), "cache_dir": tmp_path / "c", "device": "cpu", "progress": True}]
    calls.clear()
    result = runner.invoke(app, ["eval", "retrieval", "--dataset", "rworld", "--root", str(tmp_path), "--extractor",
                                 "hfnet"])
    assert calls[0]["rerank"] == 0 and calls[0]["rerank_rule"] == "delg" and calls[0]["rerank_residual"] == 20.0
    for args, message in ((["--gnd", "g.pkl"], "--dataset takes --root and --extractor, not --gnd"),
                          (["--features", "q.h5"], "not --features"),
                          (["--protocol", "classic"], "revisited protocol")):
        result = runner.invoke(app, ["eval", "retrieval", "--dataset", "rworld", "--root", str(tmp_path),
                                     "--extractor", "hfnet", *args])
        assert result.exit_code == 2 and message in result.stderr, result.output
    result = runner.invoke(app, ["eval", "retrieval", "--dataset", "rworld", "--extractor", "hfnet"])
    assert result.exit_code == 2 and "--dataset takes --root and --extractor" in result.stderr
    result = runner.invoke(app, ["eval", "retrieval", "--scores", "s.npy"])
    assert result.exit_code == 2 and "give --gnd with --ranks, --scores or --index, or --dataset" in result.stderr


def test_failed_database_image_is_listed_and_ranked_last(probe, tiny, tmp_path):
    (tiny / "jpg" / "d2.jpg").write_bytes(b"not a jpeg")
    report = el.evaluate_landmarks("tiny", tiny, extractor="probe", cache_dir=tmp_path / "c", progress=False)
    assert [name for name, _ in report.failed] == ["d2.jpg"]
    assert "1 database images without features" in report.header()
    # ranking [0 1 3 4 5 2]: medium positives at 0 1 2 -> 1
    assert report.results["medium"].mean_ap == pytest.approx(1.0)


@pytest.fixture(scope="session")
def world_test_set(tmp_path_factory):
    """A small world test set (3 query landmarks, 160x120 images) in revisitop's layout, dataset ``rsmall``."""
    from visloc.data.scene.city_conf import CityConf
    from visloc.data.world.landmarks import LandmarksConf, generate_landmarks
    from visloc.data.world.revisited import RevisitedConf

    city = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=160, height=120,
                    focal=125.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)
    conf = LandmarksConf(city=city, views_per_landmark=2, min_views=1,
                         revisited=RevisitedConf(name="rsmall", query_landmarks=3, queries_per_landmark=2,
                                                 db_views_per_landmark=4, distractor_views_per_landmark=1))
    return generate_landmarks(conf, tmp_path_factory.mktemp("rsmall"), split="test", progress=False).root


def test_hfnet_end_to_end_on_the_world(world_test_set, tmp_path):
    delg = el.evaluate_landmarks("rsmall", world_test_set, extractor="hfnet", rerank=100, cache_dir=tmp_path,
                                 progress=False)
    maps = {k: 100 * v for k, v in _maps(delg).items()}
    assert set(maps) == {"easy", "medium", "hard", "medium_after_gv", "hard_after_gv"}
    assert all(0 <= v <= 100 for v in maps.values()) and delg.num_queries >= 4
    assert maps["medium"] >= maps["hard"] and maps["medium_after_gv"] >= maps["hard_after_gv"]
    # verification finds the landmark where the tiny images' global descriptors do not (21.5 -> 84.4 here)
    assert maps["medium_after_gv"] > maps["medium"] + 30 and maps["medium_after_gv"] > 70
    gnd = el.load_revisitop("rsmall", world_test_set).gnd.gnd  # top 100 covers every non-junk image, once
    assert delg.verified_pairs == sum(delg.num_database - len(g["junk"]) for g in gnd)
    minimum = el.evaluate_landmarks("rsmall", world_test_set, extractor="hfnet", rerank=100,
                                    rerank_rule="min-inliers", cache_dir=tmp_path, progress=False)
    assert _maps(minimum)["medium"] == _maps(delg)["medium"]  # the same cached global ranking
    assert 100 * _maps(minimum)["medium_after_gv"] > maps["medium"] + 30


def test_image_source_crops(tiny):
    from visloc.io.sources import ImageSource

    src = ImageSource(tiny / "jpg", ["q0.jpg", "d1.jpg"], ResizeSpec(64), crops={"q0.jpg": (32, 16, 96, 80)})
    rec = src[0]
    assert rec.error is None and rec.original_size == (64, 64) and rec.scale == (2.0, 2.0)
    assert rec.image is not None and tuple(rec.image.shape) == (3, 32, 32)
    assert float(rec.image[0].mean()) > 0.95 and float(rec.image[1].mean()) < 0.05  # the red box only
    assert src.target_sizes() == [(32, 32), (64, 38)]  # d1 is 80x48, uncropped
    bad = ImageSource(tiny / "jpg", ["q0.jpg"], crops={"q0.jpg": (0, 0, 200, 10)})[0]
    assert bad.image is None and bad.error is not None and bad.error.endswith(
        "q0.jpg: box [0, 0, 200, 10] is empty or outside the 128x96 image")


def test_cli_index_form_takes_the_rule(fake_pipeline):
    import visloc.pipelines.evaluate_retrieval as er

    def stop(_):
        raise InputError("stop here")

    calls = fake_pipeline(er, "evaluate_index", stop)
    result = runner.invoke(app, ["eval", "retrieval", "--gnd", "g.pkl", "--index", "x.index", "--features", "q.h5",
                                 "--rerank", "5", "--db-features", "db.h5", "--rerank-rule", "delg"])
    assert result.exit_code == 2 and result.stderr == "error: stop here\n", result.output
    assert calls[0]["rerank"].rule == "delg" and calls[0]["rerank"].top == 5
    result = runner.invoke(app, ["eval", "retrieval", "--gnd", "g.pkl", "--index", "x.index", "--features", "q.h5",
                                 "--rerank", "5", "--db-features", "db.h5"])
    assert calls[1]["rerank"].rule == "min-inliers"  # the --index form keeps its default
