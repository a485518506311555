"""IVF-PQ's refine stage, the defaults scaled with N, chunked builds to disk, and the refine file's errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import visloc.retrieval.index as index_module
from visloc.cli import app
from visloc.conf import ConfError
from visloc.io.features_h5 import write_features
from visloc.io.pairs import read_pairs
from visloc.retrieval import refine
from visloc.retrieval.index import IndexConf, RetrievalIndex, RetrievalIndexError
from visloc.retrieval.index_conf import resolve_conf
from visloc.retrieval.refine import rescore


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def names_of(n: int) -> list[str]:
    return [f"db/{i:05d}.jpg" for i in range(n)]


def brute_force(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :k]


def ids(found: list[list[str]]) -> np.ndarray:
    return np.array([[int(n[3:8]) for n in row] for row in found])


# --- re-scoring ---------------------------------------------------------------------------------------


def test_rescore_exact_values(monkeypatch):
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    labels = np.array([[1, 2, 3, -1], [0, 3, 2, -1]])
    scores, top = rescore(vectors, queries, labels, 4)
    np.testing.assert_array_equal(top, [[3, 2, 1, -1], [2, 3, 0, -1]])
    np.testing.assert_allclose(scores, [[0.8, 0.6, 0, -np.inf], [0.8, 0.6, 0, -np.inf]], atol=1e-7)
    scores, top = rescore(vectors, queries, labels, 9)  # at most R = 4 results
    assert top.shape == scores.shape == (2, 4)
    monkeypatch.setattr(refine, "RESCORE_BYTES", 1)  # one query a step: the same results
    np.testing.assert_array_equal(rescore(vectors, queries, labels, 2)[1], [[3, 2], [2, 3]])
    tie = unit(np.array([[1.0, 1.0]]))
    np.testing.assert_array_equal(rescore(vectors, tie, np.array([[3, 2, 0]]), 3)[1], [[3, 2, 0]])  # 0.99, 0.99
    half_scores, _ = rescore(vectors.astype(np.float16), queries, labels, 4)
    np.testing.assert_allclose(half_scores[:, :3], scores[:, :3], atol=1e-3)


@pytest.fixture(scope="module")
def clustered():
    """20k database vectors [64] from 200 Gaussian clusters; 300 queries are new views of database images."""
    rng = np.random.default_rng(0)
    n, d, spread = 20_000, 64, 1.0 / np.sqrt(64)
    centres = unit(rng.standard_normal((200, d)))
    db = unit(centres[rng.integers(0, 200, n)] + spread * rng.standard_normal((n, d)))
    queries = unit(db[:300] + 0.5 * spread * rng.standard_normal((300, d)))
    return names_of(n), db, queries, brute_force(db, queries, 10)


@pytest.fixture(scope="module")
def refined(clustered):
    names, db, _, _ = clustered
    return RetrievalIndex.build(names, db, IndexConf(kind="ivfpq", nlist=128, m=16, k_factor=8, train_size=5000))


def test_refine_improves_recall_over_plain_pq(refined, clustered):
    _, db, queries, exact = clustered
    plain = RetrievalIndex(refined.index, refined.names, dataclasses.replace(refined.conf, refine="none"))
    assert refined.conf.refine == "fp16" and refined.vectors is not None and refined.vectors.dtype == np.float16
    got, scores = refined.search(queries, 10)
    got_plain, _ = plain.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(got), exact, strict=True)])
    recall_plain = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(got_plain), exact, strict=True)])
    assert recall > 0.97 and recall_plain < 0.75  # measured 0.994 and 0.681
    # the queries are views of database images, well separated from the rest: the top-1 is exact
    np.testing.assert_array_equal(ids(got)[:, 0], exact[:, 0])
    # the second is not (it is a neighbour within the cluster): PQ misranks it, re-scoring does not
    assert (ids(got)[:, 1] != exact[:, 1]).sum() <= 3 and (ids(got_plain)[:, 1] != exact[:, 1]).sum() >= 100
    assert (ids(got) != exact).sum() < 150 < 2000 < (ids(got_plain) != exact).sum()  # measured 68 and 2315 of 3000
    exact_scores = np.einsum("qd,qkd->qk", queries, db[ids(got)])  # re-scored: the exact inner products
    np.testing.assert_allclose(scores, exact_scores, atol=2e-3)  # of fp16-rounded vectors


def test_refine_over_every_candidate_is_exact():
    db, queries = random_unit(2000, 32, seed=1), random_unit(20, 32, seed=2)
    names = names_of(2000)
    conf = IndexConf(kind="ivfpq", nlist=16, nprobe=16, m=8, refine="fp32", k_factor=400)  # 5 x 400 >= N
    index = RetrievalIndex.build(names, db, conf)
    found, scores = index.search(queries, 5)
    top = brute_force(db, queries, 5)
    np.testing.assert_array_equal(ids(found), top)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ db.T, top, 1), atol=1e-6)
    found, _ = index.search(db[:3], 4, exclude_names=names[:3])  # self-exclusion after re-scoring
    assert all(names[i] not in row and len(row) == 4 for i, row in enumerate(found))


# --- defaults scaled with N --------------------------------------------------------------------------


def test_auto_conf_values():
    ivfpq = IndexConf(kind="ivfpq")
    assert resolve_conf(ivfpq, 1_000_000, 256) == dataclasses.replace(
        ivfpq, nlist=4096, m=64, nprobe=16, refine="fp16", k_factor=10, train_size=262_144)
    assert resolve_conf(ivfpq, 100_000, 1024) == dataclasses.replace(
        ivfpq, nlist=1024, m=64, nprobe=16, refine="fp16", k_factor=4, train_size=65_536)
    assert resolve_conf(ivfpq, 4_100_000, 2048) == dataclasses.replace(
        ivfpq, nlist=8192, m=64, nprobe=32, refine="fp16", k_factor=20, train_size=524_288)
    assert [resolve_conf(ivfpq, 100_000, d).m for d in (30, 96, 2048)] == [6, 24, 64]
    small = resolve_conf(ivfpq, 1000, 32)  # nlist 128 reduced to 1000 // 39 without a warning (not set)
    assert (small.nlist, small.nprobe, small.train_size) == (25, 16, 1000)
    hnsw = IndexConf(kind="hnsw")
    sizes = (10_000, 100_000, 1_000_000, 4_100_000, 10**8)
    assert [resolve_conf(hnsw, n, 64).ef_search for n in sizes] == [64, 128, 256, 256, 512]
    assert [resolve_conf(hnsw, n, 64).ef_construction for n in sizes] == [40, 40, 128, 256, 512]
    assert resolve_conf(hnsw, 10**6, 64).refine == "none" and resolve_conf(IndexConf(), 10**6, 64).refine == "none"
    kept = resolve_conf(IndexConf(kind="ivfpq", nlist=64, nprobe=7, k_factor=3, m=8, refine="fp32"), 10**6, 64)
    assert (kept.nlist, kept.nprobe, kept.k_factor, kept.m, kept.refine) == (64, 7, 3, 8, "fp32")


def test_ef_construction_reaches_faiss():
    index = RetrievalIndex.build(names_of(300), random_unit(300, 8), IndexConf(kind="hnsw", ef_construction=77))
    assert index.index.hnsw.efConstruction == 77 == index.conf.ef_construction
    assert RetrievalIndex.build(names_of(300), random_unit(300, 8), IndexConf(kind="hnsw")).conf.ef_construction == 40


def test_refine_conf_errors():
    with pytest.raises(ConfError, match="IndexConf.refine=fp16 applies to kind=ivfpq only"):
        IndexConf(kind="hnsw", refine="fp16")
    with pytest.raises(ConfError, match="IndexConf.k_factor must be >= 1"):
        IndexConf(kind="ivfpq", k_factor=0)


# --- files ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    db = random_unit(2000, 32, seed=3)
    index = RetrievalIndex.build(names_of(2000), db, IndexConf(kind="ivfpq", nlist=16, m=8))
    return index, index.save(tmp_path / "db.index")


def test_refined_round_trip(saved):
    index, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == \
        ["db.index", "db.index.json", "db.index.names.txt", "db.index.vectors.npy"]
    record = json.loads(path.with_name("db.index.json").read_text())
    assert record["version"] == 2 and record["vectors"]["dtype"] == "float16"
    assert record["conf"] == {**record["conf"], "kind": "ivfpq", "nlist": 16, "m": 8, "nprobe": 16, "refine": "fp16",
                              "k_factor": 4, "train_size": 2000}  # the resolved values
    loaded = RetrievalIndex.load(path)
    assert isinstance(loaded.vectors, np.memmap) and loaded.conf == index.conf
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    queries = random_unit(30, 32, seed=4)
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    loaded.save(path)  # from its own memory map onto itself
    assert RetrievalIndex.load(path).search(queries, 10)[0] == before[0]
    plain = RetrievalIndex.build(names_of(2000), random_unit(2000, 32, seed=3), IndexConf(kind="ivfpq", refine="none"))
    plain.save(path)  # a stale vectors file is removed
    assert not path.with_name("db.index.vectors.npy").exists() and RetrievalIndex.load(path).vectors is None


def _one_line_error(path, *words):
    with pytest.raises(RetrievalIndexError) as info:
        RetrievalIndex.load(path)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_refine_file_errors(saved):
    _, path = saved
    vectors = path.with_name("db.index.vectors.npy")
    good = vectors.read_bytes()
    vectors.unlink()
    _one_line_error(path, f"{vectors}: refine vectors of the index not found")
    vectors.write_bytes(good[:len(good) // 2])
    _one_line_error(path, f"{vectors}: truncated, {len(good) // 2} bytes where {len(good)} are expected")
    vectors.write_bytes(b"nonsense")
    _one_line_error(path, f"{vectors}: not a readable .npy file")
    np.save(vectors, random_unit(10, 32).astype(np.float16))
    _one_line_error(path, f"{vectors}: float16 [10, 32], but db.index.json records float16 [2000, 32]")
    np.save(vectors, random_unit(2000, 32, seed=3))
    _one_line_error(path, "float32 [2000, 32], but db.index.json records float16 [2000, 32]")
    np.save(vectors, random_unit(2000, 32, seed=5).astype(np.float16))  # another index's vectors
    _one_line_error(path, f"{vectors}: the vectors differ from those the index was saved with")
    vectors.write_bytes(good)
    record_path = path.with_name("db.index.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "vectors": None}))
    _one_line_error(path, "db.index.json: conf.refine=fp16 but no vectors file is recorded")
    record_path.write_text(json.dumps({**record, "version": 3}))
    _one_line_error(path, "index format version 3, this visloc reads 1 and 2")


def test_version_1_index_loads(tmp_path):
    db = random_unit(500, 16, seed=6)
    index = RetrievalIndex.build(names_of(500), db, IndexConf(kind="hnsw", hnsw_m=8))
    path = index.save(tmp_path / "old.index")
    record_path = path.with_name("old.index.json")
    record = json.loads(record_path.read_text())
    old_conf = {k: v for k, v in record["conf"].items() if k not in ("refine", "k_factor", "ef_construction")}
    record_path.write_text(json.dumps({**{k: v for k, v in record.items() if k != "vectors"}, "version": 1,
                                       "conf": {**old_conf, "nprobe": 16, "nlist": 1024, "m": 16}}))
    loaded = RetrievalIndex.load(path)
    assert loaded.conf.refine == "none" and loaded.conf.ef_search == 32 and loaded.vectors is None
    assert loaded.conf.ef_construction == 40  # faiss's default, with which version 1 built
    assert loaded.search(db[:3], 3)[0] == index.search(db[:3], 3)[0]


# --- building from disk in chunks -------------------------------------------------------------------------


def test_build_on_disk_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "ADD_BATCH", 300)
    db, names = random_unit(2000, 32, seed=7), names_of(2000)
    calls: list[np.ndarray] = []

    def read_rows(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.copy())
        return db[rows]

    conf = IndexConf(kind="ivfpq", nlist=16, m=8, train_size=1000, refine="fp32", k_factor=100)
    index = RetrievalIndex.build_on_disk(tmp_path / "db.index", names, read_rows, conf)
    assert len(calls[0]) == 1  # the dimension
    np.testing.assert_array_equal(calls[1], np.sort(np.random.default_rng(0).choice(2000, 1000, replace=False)))
    chunks = calls[2:]
    assert [len(c) for c in chunks] == [300] * 6 + [200]
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(2000))
    assert isinstance(index.vectors, np.memmap)
    np.testing.assert_allclose(index.vectors, db, atol=1e-7)  # renormalised, as every indexed vector
    loaded = RetrievalIndex.load(tmp_path / "db.index")
    queries = random_unit(10, 32, seed=8)
    found, _ = loaded.search(queries, 5)  # 500 candidates in every list: exact for these
    np.testing.assert_array_equal(ids(found), brute_force(db, queries, 5))
    assert index.search(queries, 5)[0] == found


def test_build_on_disk_checks_rows(tmp_path):
    db = random_unit(100, 8)
    with pytest.raises(ValueError, match=r"read_rows\(\[0\]\) must be L2-normalised, row 0 has norm 2"):
        RetrievalIndex.build_on_disk(tmp_path / "x.index", names_of(100), lambda rows: 2 * db[rows])
    with pytest.raises(ValueError, match="an index needs at least one vector"):
        RetrievalIndex.build_on_disk(tmp_path / "x.index", [], lambda rows: db[rows])
    assert not list(tmp_path.iterdir())


def test_cli_builds_refined_ivfpq_in_chunks(tmp_path, monkeypatch):
    db, queries = random_unit(600, 16, seed=9), random_unit(3, 16, seed=10)
    write_features(tmp_path / "db.h5", {n: {"global_descriptor": v} for n, v in zip(names_of(600), db, strict=True)})
    write_features(tmp_path / "q.h5", {f"q{i}.jpg": {"global_descriptor": v} for i, v in enumerate(queries)})
    monkeypatch.setattr(index_module, "ADD_BATCH", 128)
    read_sizes: list[int] = []
    original = index_module.read_global_descriptors

    def counting(path, names=None):
        read_sizes.append(-1 if names is None else len(names))
        return original(path, names)

    monkeypatch.setattr(index_module, "read_global_descriptors", counting)
    index = tmp_path / "db.index"
    result = CliRunner().invoke(app, ["index", "build", "--features", str(tmp_path / "db.h5"), "--out", str(index),
                                      "--set", "kind=ivfpq", "--set", "train_size=300", "--set", "k_factor=200"])
    assert result.exit_code == 0, result.output
    assert read_sizes == [1, 300, 128, 128, 128, 128, 88]  # the dimension, the training sample, the chunks
    record = json.loads(index.with_name("db.index.json").read_text())
    assert {k: record["conf"][k] for k in ("nlist", "m", "nprobe", "refine", "k_factor", "train_size")} == \
        {"nlist": 7, "m": 4, "nprobe": 7, "refine": "fp16", "k_factor": 200, "train_size": 300}
    assert index.with_name("db.index.vectors.npy").is_file()
    result = CliRunner().invoke(app, ["search", "--index", str(index), "--features", str(tmp_path / "q.h5"),
                                      "-k", "4", "--out", str(tmp_path / "pairs.txt")])
    assert result.exit_code == 0, result.output
    top = brute_force(db, queries, 4)  # 4 x 200 candidates >= 600: every vector re-scored
    assert read_pairs(tmp_path / "pairs.txt") == [(f"q{i}.jpg", names_of(600)[j]) for i in range(3) for j in top[i]]
