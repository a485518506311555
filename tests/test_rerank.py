"""Spatial re-ranking: the pure function on real photos, its edge cases, and ``visloc search --rerank``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.homography import synthetic_pairs
from visloc.features.api import extract_image
from visloc.io.pairs import read_pairs
from visloc.matching.base import Matcher
from visloc.pipelines.extract import extract_features
from visloc.retrieval.rerank import rerank
from visloc.retrieval.vlad import learn_vocabulary, save_vocabulary
from visloc.types import Features, Matches

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")


@pytest.fixture(scope="module")
def photo_pairs():
    return synthetic_pairs(seed=1, pairs_per_photo=1, size=(240, 180), photos=PHOTOS)


@pytest.fixture(scope="module")
def feats(photo_pairs, build_extractor):
    """ALIKED features of the originals and of their warped copies, by name."""
    ex = build_extractor("aliked-n16")
    out = {}
    for p in photo_pairs:
        out[p.name0], out[p.name1] = extract_image(ex, p.image0), extract_image(ex, p.image1)
    return out


@pytest.mark.parametrize("model", ["homography", "fundamental", "affine"])
def test_true_match_moves_from_rank_3_to_1(feats, photo_pairs, build_matcher, model):
    nn = build_matcher("nn-mutual")
    for i, p in enumerate(photo_pairs):
        others = [q for j, q in enumerate(photo_pairs) if j != i]
        db = [others[0].name0, others[1].name1, p.name1, others[2].name0]  # the true match at rank 3
        res = rerank(feats[p.name0], [feats[n] for n in db], db, model, 3.0, nn)
        assert res.names(db)[0] == p.name1, (model, dict(zip(db, res.inliers.tolist(), strict=True)))
        assert res.inliers[2] > 2 * max(res.inliers[[0, 1, 3]])
        assert sorted(res.order.tolist()) == [0, 1, 2, 3]


class _NoMatches(Matcher):
    def forward(self, f0: Features, f1: Features) -> Matches:
        return Matches.empty(f0.num_keypoints, f1.num_keypoints)


def test_ties_keep_the_global_order_and_errors(feats):
    names = list(feats)
    res = rerank(feats[names[0]], [feats[n] for n in names], names, "homography", 3.0, _NoMatches(None))
    assert res.order.tolist() == list(range(len(names))) and (res.inliers == 0).all()
    with pytest.raises(ValueError, match=r"db_names: expected 8 names"):
        rerank(feats[names[0]], [feats[n] for n in names], names[:2], "homography", 3.0, _NoMatches(None))
    with pytest.raises(ValueError, match=r"model: expected homography, fundamental or affine"):
        rerank(feats[names[0]], [], [], "essential", 3.0, _NoMatches(None))
    with pytest.raises(ValueError, match=r"threshold: expected > 0"):
        rerank(feats[names[0]], [], [], "homography", 0.0, _NoMatches(None))


def _write(folder, name, image):
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / name), cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))


def test_search_rerank_cli(photo_pairs, feats, tmp_path, monkeypatch):
    vocab = save_vocabulary(tmp_path / "vocab.pt", learn_vocabulary(
        np.concatenate([feats[p.name0].descriptors.numpy() for p in photo_pairs]), 8), {}, {})
    for p in photo_pairs:
        _write(tmp_path / "db", p.name0, p.image0)
        _write(tmp_path / "q", p.name1, p.image1)
    sets = [f"vocabulary={vocab}", "num_clusters=8"]
    for part in ("db", "q"):
        extract_features(tmp_path / part, tmp_path / f"{part}.h5", extractor="vlad-aliked", overrides=sets,
                         progress=False)
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", "--features", str(tmp_path / "db.h5"),
                                 "--out", str(tmp_path / "db.index")])
    assert result.exit_code == 0, result.output
    args = ["search", "--index", str(tmp_path / "db.index"), "--features", str(tmp_path / "q.h5"),
            "--out", str(tmp_path / "pairs.txt"), "-k", "4", "--rerank", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--rerank needs --db-features" in result.output
    import inspect

    import visloc.retrieval.rerank as R

    calls = []

    def spy(*a, **k):  # every flag reaches the code: bound to the real signature, checked by name
        calls.append(inspect.signature(rerank).bind(*a, **k).arguments)
        return rerank(*a, **k)

    monkeypatch.setattr(R, "rerank", spy)
    result = runner.invoke(app, [*args, "--db-features", str(tmp_path / "db.h5"), "--rerank-model", "affine",
                                 "--rerank-threshold", "4", "--rerank-matcher", "lightglue", "--set-rerank-matcher",
                                 "filter_threshold=0.2", "--rerank-min-inliers", "12"])
    assert result.exit_code == 0, result.output
    assert "re-ranked the top 3 of each query by affine inliers" in result.output
    assert len(calls) == 4 and all((c["model"], c["threshold"], c["min_inliers"]) == ("affine", 4.0, 12)
                                   and type(c["matcher"]).__name__ == "LightGlue" for c in calls)
    assert calls[0]["matcher"].conf.features == "aliked"  # inferred from the features' extractor
    assert calls[0]["matcher"].conf.filter_threshold == 0.2
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 16
    for p in photo_pairs:
        ranked = [d for q, d in pairs if q == p.name1]
        assert ranked[0] == p.name0 and sorted(ranked) == sorted(q.name0 for q in photo_pairs)
    result = runner.invoke(app, [*args, "--db-features", str(tmp_path / "db.h5"), "--rerank-model", "essential"])
    assert result.exit_code == 2
    assert "--rerank-model: expected one of homography, fundamental, affine, got 'essential'" in result.output


def test_min_inliers_keeps_unverified_images_in_global_order(monkeypatch):
    # Counts per global position: only 40 and 20 reach the 15-inlier bar; 12, 7 and 3 are chance-level
    # and must keep their global order behind the verified images instead of being shuffled by noise.
    import numpy as np

    import visloc.retrieval.rerank as rr

    counts = iter([7, 3, 40, 12, 20] * 3)
    monkeypatch.setattr(rr, "count_inliers", lambda *a, **k: next(counts))
    names = ["a", "b", "c", "d", "e"]
    empty = Features(torch.zeros(0, 2), torch.zeros(0, 128), torch.zeros(0), (64, 48))
    feats = [empty] * 5
    res = rr.rerank(empty, feats, names, "homography", 3.0, matcher=None, min_inliers=15)
    assert res.names(names) == ["c", "e", "a", "b", "d"]
    np.testing.assert_array_equal(res.inliers, [7, 3, 40, 12, 20])
    res = rr.rerank(empty, feats, names, "homography", 3.0, matcher=None, min_inliers=0)
    assert res.names(names) == ["c", "e", "d", "a", "b"]
    res = rr.rerank(empty, feats, names, "homography", 3.0, matcher=None, min_inliers=99, rule="delg")
    assert res.names(names) == ["c", "e", "d", "a", "b"]  # DELG: any inlier promotes, min_inliers unused
    with pytest.raises(ValueError, match="rule: expected min-inliers or delg"):
        rr.rerank(empty, feats, names, "homography", 3.0, matcher=None, rule="best")
    with pytest.raises(ValueError, match="min_inliers"):
        rr.rerank(empty, feats, names, "homography", 3.0, matcher=None, min_inliers=-1)
