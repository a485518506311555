"""The landmark-retrieval dataset: counts, a valid revisitop ground truth, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visloc.data.landmarks import DEFAULT_SOURCES, VIEW_KINDS, available_sources, build_landmarks
from visloc.eval.oxford_paris import load_gnd

SMALL = ("skimage:astronaut", "skimage:coffee", "skimage:chelsea")


def build(path, seed=0, **kwargs):
    return build_landmarks(path, seed=seed, views_per_landmark=3, size=(160, 120), sources=SMALL, **kwargs)


def test_counts_and_ground_truth(tmp_path):
    gnd_path = build(tmp_path)
    assert gnd_path == tmp_path / "gnd.json"
    gt = load_gnd(gnd_path)
    assert len(gt.imlist) == 9 and len(gt.qimlist) == 2  # 3 landmarks x 3 views; half (rounded up) are queries
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == list(gt.imlist)
    assert sorted(p.name for p in (tmp_path / "queries").iterdir()) == list(gt.qimlist)
    assert gt.is_revisited
    views = json.loads((tmp_path / "views.json").read_text())
    for q, g in zip(gt.qimlist, gt.gnd, strict=True):
        landmark = q.removesuffix("_q.jpg")
        assert len(g["easy"]) == 2 and len(g["hard"]) == 1  # VIEW_KINDS[:3]
        occluded = [j for j, n in enumerate(gt.imlist) if views[f"db/{n}"]["occluder"] == landmark]
        assert g["junk"].tolist() == occluded  # the lone distractor's occluder is a query's photo
        for level in ("easy", "hard"):
            for j in g[level]:
                view = views[f"db/{gt.imlist[j]}"]
                kind = VIEW_KINDS[int(gt.imlist[j].rsplit("_", 1)[1][0])][0]
                assert (view["landmark"], view["kind"], view["level"]) == (landmark, kind, level)
                if kind == "occlusion":  # filled from the distractor landmark, never from a query's photo
                    assert view["occluder"] == "coffee" and "coffee_q.jpg" not in gt.qimlist
        positives = set(np.r_[g["easy"], g["hard"]].tolist())
        assert positives == {j for j, n in enumerate(gt.imlist) if n.startswith(landmark + "_")}
    import cv2

    assert cv2.imread(str(tmp_path / "db" / gt.imlist[0])).shape == (120, 160, 3)


def test_deterministic_for_a_seed(tmp_path):
    build(tmp_path / "a", seed=3)
    build(tmp_path / "b", seed=3)
    build(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    a, c = (tmp_path / "a" / "db" / "coffee_0.jpg"), (tmp_path / "c" / "db" / "coffee_0.jpg")
    assert a.read_bytes() != c.read_bytes()


def test_rebuild_removes_stale_images_and_options(tmp_path):
    build_landmarks(tmp_path, views_per_landmark=4, size=(160, 120), sources=SMALL)
    gt = load_gnd(build(tmp_path, num_queries=3))
    assert len(list((tmp_path / "db").iterdir())) == 9 and len(gt.qimlist) == 3
    with pytest.raises(ValueError, match="num_queries must be in"):
        build(tmp_path, num_queries=4)
    with pytest.raises(ValueError, match="views_per_landmark must be >= 1"):
        build_landmarks(tmp_path, views_per_landmark=0, sources=SMALL)
    with pytest.raises(ValueError, match="is not 'skimage:<name>'"):
        available_sources(["astronaut"])


def test_every_landmark_a_query_marks_occluded_views_junk(tmp_path):
    gt = load_gnd(build(tmp_path, num_queries=3))
    views = json.loads((tmp_path / "views.json").read_text())
    for q, g in zip(gt.qimlist, gt.gnd, strict=True):
        expected = [j for j, n in enumerate(gt.imlist) if views[f"db/{n}"]["occluder"] == q.removesuffix("_q.jpg")]
        assert g["junk"].tolist() == expected
    assert sum(len(g["junk"]) for g in gt.gnd) == 3  # one occlusion view per landmark (VIEW_KINDS[2])


def test_missing_opencv_photos_are_skipped(tmp_path):
    assert available_sources(DEFAULT_SOURCES, tmp_path) == [s for s in DEFAULT_SOURCES if s.startswith("skimage:")]
