"""faiss on this CPU: build and query time, memory and disk per vector, recall of approximate indexes vs exact.

Usage: python benchmarks/bench_faiss.py [--sizes 100000 1000000] [--dims 256 1024] [--queries 1000]
                                         [--threads 2] [--sweep] [--set key=value ...]
                                         [--out outputs/bench_faiss.json] [--quick]

Data: clustered unit vectors (1,000 Gaussian clusters, noise as large as the centre: a hard stand-in
for global descriptors of many places), queries drawn from the same clusters. Each index is built as
``visloc index build`` builds it (``RetrievalIndex.build_on_disk``: a seeded training sample, chunked
adds, the refine vectors written to disk as they are added), loaded back as ``visloc search`` loads it
(afresh for each row: a new memory map of the refine vectors, whose file the page cache holds after
the build) and searched with all queries in one batch on ``--threads`` threads, k = 10 then k = 50.
``recall@10`` is the share of the exact top-10 (flat inner product) in the top-10, ``1-recall@10`` the
share of queries whose exact nearest neighbour is in the top 10, ``recall@50`` the share of the exact
top-50 in a search for 50 (``visloc search``'s default ``-k``). ``RAM B/vec``: the faiss file per vector
(what a loaded index holds in memory; names not counted); ``disk B/vec``: the faiss file and the refine
vectors. Rows: ``ivfpq`` is the refined IVF-PQ at the defaults, ``ivfpq-cold`` the same with its
vectors file evicted from the page cache first (``posix_fadvise``), ``ivfpq-norefine`` the same index
without its refine stage, ``hnsw`` at the scaled ``ef_search``; ``--sweep`` adds rows for other
``k_factor``, ``nprobe`` and ``ef_search`` on the same builds. ``--set`` overrides the IndexConf of the
approximate indexes (``--set m=128``). Configurations whose float32 data would not fit in half of this
machine's memory are skipped. ``--quick``: 4,000 vectors of dimension 32, 50 queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from visloc.conf import apply_overrides, conf_to_dict
from visloc.retrieval.index import IndexConf, RetrievalIndex
from visloc.retrieval.index_files import vectors_path


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """``n`` unit vectors around unit ``centres [C, d]`` (noise of norm ``spread``), in chunks."""
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        noise = rng.standard_normal((m, d)).astype(np.float32) * (spread / np.sqrt(d))
        x = centres[rng.integers(0, len(centres), m)] + noise
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def measure(index: RetrievalIndex, q: np.ndarray, exact: np.ndarray) -> dict:
    """Query time (ms per query, one batch) and recalls at k = 10 and 50 against ``exact [Q, 50]``."""
    out = {}
    for k in (10, 50):
        t0 = time.perf_counter()
        found, _ = index.search(q, k)
        out[f"query_ms@{k}"] = (time.perf_counter() - t0) / len(q) * 1000
        ids = [[int(x) for x in row] for row in found]
        out[f"recall@{k}"] = float(np.mean([len(set(a) & set(b[:k])) / k for a, b in zip(ids, exact, strict=True)]))
        if k == 10:
            out["1-recall@10"] = float(np.mean([b[0] in set(a) for a, b in zip(ids, exact, strict=True)]))
    return out


def sizes(path: Path, n: int) -> dict:
    ram = path.stat().st_size
    vectors = vectors_path(path).stat().st_size if vectors_path(path).exists() else 0
    return {"ram_bytes_per_vector": ram / n, "disk_bytes_per_vector": (ram + vectors) / n}


def variants(conf: IndexConf, sweep: bool) -> list[tuple[str, dict]]:
    """The resolved ``conf`` (no changes) and the search-time changes measured on the same build."""
    out: list[tuple[str, dict]] = [(conf.kind, {})]
    if conf.kind == "ivfpq":
        out.append(("ivfpq-cold", {}))
        out.append(("ivfpq-norefine", {"refine": "none"}))
        if sweep:
            nprobe, k_factor = conf.nprobe or 1, conf.k_factor or 1
            out += [("ivfpq", {"k_factor": f}) for f in (2, 4, 8, 16, 32) if f != k_factor]
            out += [("ivfpq", {"nprobe": p}) for p in (nprobe // 2, nprobe * 2) if p >= 1]
    if conf.kind == "hnsw" and sweep:
        ef = conf.ef_search or 1
        out += [("hnsw", {"ef_search": e}) for e in (ef // 4, ef // 2, ef * 2) if e >= 16]
    return out


def evict(file: Path) -> None:
    """Drop ``file``'s pages from the page cache (this file only: ``posix_fadvise``, no root, no other file)."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def loaded(path: Path, changes: dict, cold: bool = False) -> RetrievalIndex:
    """``path`` loaded afresh (as ``visloc search`` does: a new memory map) with search-time ``changes``.

    ``cold``: the refine vectors are first evicted from the page cache, so each candidate is read from disk.
    """
    if cold and vectors_path(path).exists():
        evict(vectors_path(path))
    index = RetrievalIndex.load(path)
    return RetrievalIndex(index.index, index.names, dataclasses.replace(index.conf, **changes), index.vectors)


def run(n: int, d: int, queries: int, kinds: list[str], overrides: list[str], sweep: bool,
        seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db, q = clustered(n, d, rng, centres), clustered(queries, d, rng, centres)
    names = [f"{i}" for i in range(n)]
    t0 = time.perf_counter()
    flat = RetrievalIndex.build(names, db)
    build_s = time.perf_counter() - t0
    found, _ = flat.search(q, 50)
    exact = np.array([[int(x) for x in row] for row in found])
    rows = [{"n": n, "d": d, "kind": "flat", "build_s": build_s, **measure(flat, q, exact),
             "ram_bytes_per_vector": 4 * d, "disk_bytes_per_vector": 4 * d, "conf": conf_to_dict(flat.conf)}]
    print(json.dumps(rows[-1]), flush=True)
    del flat
    with tempfile.TemporaryDirectory(prefix="bench_faiss.") as tmp:
        for kind in kinds:
            path = Path(tmp) / f"{kind}.index"
            conf = apply_overrides(IndexConf(kind=kind), overrides)
            t0 = time.perf_counter()
            built = RetrievalIndex.build_on_disk(path, names, db.__getitem__, conf).conf
            build_s = time.perf_counter() - t0
            for label, changes in variants(built, sweep):
                index = loaded(path, changes, cold=label.endswith("-cold"))
                rows.append({"n": n, "d": d, "kind": label, "build_s": build_s, **measure(index, q, exact),
                             **sizes(path, n), "conf": conf_to_dict(index.conf)})
                if label == "ivfpq-norefine":
                    rows[-1]["disk_bytes_per_vector"] = rows[-1]["ram_bytes_per_vector"]
                print(json.dumps(rows[-1]), flush=True)
                del index
            for file in Path(tmp).iterdir():
                file.unlink()
    return rows


def params(r: dict) -> str:
    c = r["conf"]
    if r["kind"].startswith("ivfpq"):
        refine = f", k_factor={c['k_factor']}" if c["refine"] != "none" else ""
        return f"nlist={c['nlist']}, m={c['m']}, nprobe={c['nprobe']}{refine}"
    return f"M={c['hnsw_m']}, ef_construction={c['ef_construction']}, ef_search={c['ef_search']}" \
        if r["kind"] == "hnsw" else ""


def markdown(rows: list[dict]) -> str:
    """Markdown table of the measured configurations."""
    lines = ["| n | d | kind | params | build s | ms/query k=10 | ms/query k=50 | RAM B/vec | disk B/vec | "
             "recall@10 | 1-recall@10 | recall@50 |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['kind']} | {params(r)} | {r['build_s']:.1f} | "
                     f"{r['query_ms@10']:.3f} | {r['query_ms@50']:.3f} | {r['ram_bytes_per_vector']:.0f} | "
                     f"{r['disk_bytes_per_vector']:.0f} | {r['recall@10']:.3f} | {r['1-recall@10']:.3f} | "
                     f"{r['recall@50']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=["ivfpq", "hnsw"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also other k_factor, nprobe and ef_search")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="IndexConf key=value")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="4,000 vectors of dimension 32, 50 queries")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dims, args.queries = [4000], [32], 50
    faiss.omp_set_num_threads(args.threads)
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    print(json.dumps({"load_average": os.getloadavg(), "threads": args.threads, "cpus": os.cpu_count()}))
    rows: list[dict] = []
    for n in args.sizes:
        for d in args.dims:
            if n * d * 4 * 2 > budget:  # data + the flat index's copy
                print(json.dumps({"n": n, "d": d, "skipped": "does not fit in half the memory"}))
                continue
            rows += run(n, d, args.queries, args.kinds, args.overrides, args.sweep)
    print(markdown(rows))
    print(json.dumps({"load_average": os.getloadavg()}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
