"""Retrieval evaluation straight from an index and query features: rank conversion and ``eval retrieval --index``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.pipelines.evaluate_retrieval import ranks_from_pairs

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_ranks_from_pairs_exact():
    imlist = ["a", "b", "c", "d"]  # revisitop names without extension
    qimlist = ["q1", "q0"]
    pairs = [("q0.jpg", "c.jpg"), ("q0.jpg", "a.jpg"), ("q0.jpg", "d.jpg"), ("q0.jpg", "b.jpg"),
             ("other.jpg", "a.jpg"),  # a query outside the ground truth is ignored
             ("q1", "b"), ("q1", "d"), ("q1", "a")]  # three results only: every column is cut to three
    ranks = ranks_from_pairs(pairs, qimlist, imlist)
    np.testing.assert_array_equal(ranks, np.array([[1, 2], [3, 0], [0, 3]]))
    assert ranks.dtype == np.int64
    with pytest.raises(ValueError, match="'e.jpg' .* not in the ground truth's imlist"):
        ranks_from_pairs([("q0", "e.jpg"), ("q1", "a")], qimlist, imlist)
    with pytest.raises(ValueError, match="query 'q1' has no retrieved database image"):
        ranks_from_pairs([("q0", "a")], qimlist, imlist)
    with pytest.raises(ValueError, match="lists a database index twice"):
        ranks_from_pairs([("q0", "a"), ("q0", "a.jpg"), ("q1", "a"), ("q1", "b")], qimlist, imlist)


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory):
    """A tiny landmark dataset with vlad-aliked features of db and queries and a flat index."""
    from visloc.data.landmarks import build_landmarks
    from visloc.pipelines.extract import extract_features
    from visloc.pipelines.retrieve import build_index
    from visloc.pipelines.vocab import build_vocabulary

    root = tmp_path_factory.mktemp("landmarks")
    gnd = build_landmarks(root / "data", views_per_landmark=3, size=(160, 120),
                          sources=("skimage:astronaut", "skimage:coffee", "skimage:chelsea"))
    build_vocabulary(root / "data" / "db", root / "vocab.pt", num_clusters=8, overrides=["max_num_keypoints=256"],
                     progress=False)
    sets = [f"vocabulary={root / 'vocab.pt'}", "num_clusters=8", "max_num_keypoints=256"]
    for part in ("db", "queries"):
        extract_features(root / "data" / part, root / f"{part}.h5", extractor="vlad-aliked", overrides=sets,
                         progress=False)
    build_index(root / "db.h5", root / "db.index")
    return root, gnd


def test_cli_eval_retrieval_from_index(landmarks, monkeypatch):
    root, gnd = landmarks
    out = root / "report.json"
    args = ["eval", "retrieval", "--gnd", gnd, "--index", root / "db.index", "--features", root / "queries.h5"]
    result = invoke(*args, "--k", 1, "--k", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "(2 queries, 9 database images), ranking db.index" in result.stdout and "mP@k[1 3]" in result.stdout
    report = json.loads(out.read_text())
    assert report["rerank"] == 0 and set(report["results"]) == {"easy", "medium", "hard"}
    assert report["results"]["medium"]["mAP"] > 0.5  # the queries' own landmark comes first

    import inspect

    import visloc.retrieval.rerank as R

    calls = []
    original = R.rerank

    def spy(*a, **k):  # the flags reach the code: bound to the real signature, checked by name
        bound = inspect.signature(original).bind(*a, **k)
        bound.apply_defaults()
        calls.append(bound.arguments)
        return original(*a, **k)

    monkeypatch.setattr(R, "rerank", spy)
    result = invoke(*args, "--rerank", 2, "--db-features", root / "db.h5", "--rerank-model", "affine",
                    "--rerank-threshold", 4, "--rerank-matcher", "nn-ratio", "--set-rerank-matcher",
                    "ratio_threshold=0.95", "--rerank-min-inliers", 9, "--out", out)
    assert result.exit_code == 0, result.output
    assert "top 2 re-ranked" in result.stdout and len(calls) == 2  # one per query
    for c in calls:
        assert (c["model"], c["threshold"], c["min_inliers"], len(c["db_names"])) == ("affine", 4.0, 9, 2)
        assert type(c["matcher"]).__name__ == "NearestNeighbor"
        assert c["matcher"].conf.ratio_threshold == 0.95
    assert json.loads(out.read_text())["rerank"] == 2


@pytest.mark.parametrize("case", ["none", "ranks-and-index", "index-alone", "features-alone", "rerank-no-db",
                                  "rerank-with-ranks", "missing-query"])
def test_cli_eval_retrieval_from_index_bad_input(landmarks, tmp_path, case):
    root, gnd = landmarks
    np.save(tmp_path / "ranks.npy", np.zeros((9, 2), np.int64))
    index, feats = ["--index", root / "db.index"], ["--features", root / "queries.h5"]
    args, expected = {
        "none": ([], "exactly one of --ranks or --scores or --index"),
        "ranks-and-index": (["--ranks", tmp_path / "ranks.npy", *index, *feats], "exactly one of --ranks"),
        "index-alone": (index, "--index and --features go together"),
        "features-alone": (["--ranks", tmp_path / "ranks.npy", *feats], "--index and --features go together"),
        "rerank-no-db": ([*index, *feats, "--rerank", 2], "--rerank needs --db-features"),
        "rerank-with-ranks": (["--ranks", tmp_path / "ranks.npy", "--rerank", 2], "need --index"),
        "missing-query": ([*index, "--features", root / "db.h5"], "db.h5: no features for query 'astronaut_q.jpg'"),
    }[case]
    result = invoke("eval", "retrieval", "--gnd", gnd, *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
