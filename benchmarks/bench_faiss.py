"""faiss on this CPU: build and query time, index size, and recall@10 of approximate indexes vs exact.

Usage: python benchmarks/bench_faiss.py [--sizes 100000 1000000] [--dims 256 1024 4096]
                                         [--queries 1000] [--threads 2] [--out outputs/bench_faiss.json] [--quick]

Data: clustered unit vectors (1,000 Gaussian clusters, a realistic stand-in for global descriptors of
many places), queries drawn from the same clusters. "recall@10" is the fraction of the exact top-10
(flat inner product) found in the approximate top-10; "top1_in_10" the fraction of queries whose exact
nearest neighbour is in the approximate top-10 (faiss's 1-recall@10). Configurations whose float32 data would not fit
in half of this machine's memory are skipped and reported as such. ``--quick``: 4,000 vectors of
dimension 32, 50 queries (the whole code path in seconds). Prints one JSON line per configuration and
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np

from visloc.retrieval.index import IndexConf, RetrievalIndex


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """``n`` unit vectors around unit ``centres [C, d]`` (noise of norm ``spread``), in chunks."""
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        noise = rng.standard_normal((m, d)).astype(np.float32) * (spread / np.sqrt(d))
        x = centres[rng.integers(0, len(centres), m)] + noise
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def run(n: int, d: int, queries: int, kinds: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db, q = clustered(n, d, rng, centres), clustered(queries, d, rng, centres)
    names = [f"{i}" for i in range(n)]
    rows, exact = [], None
    for kind in ["flat", *kinds]:
        conf = IndexConf(kind=kind, nlist=int(min(4096, max(64, np.sqrt(n) * 4))), m=min(64, d // 8))
        t0 = time.perf_counter()
        index = RetrievalIndex.build(names, db, conf)
        t1 = time.perf_counter()
        found, _ = index.search(q, 10)
        t2 = time.perf_counter()
        ids = np.array([[int(x) for x in row] for row in found])
        if kind == "flat":
            exact = ids
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)]))
        top1 = float(np.mean([b[0] in set(a) for a, b in zip(ids, exact, strict=True)]))
        size = faiss.serialize_index(index.index).nbytes
        rows.append({"n": n, "d": d, "kind": kind, "build_s": t1 - t0, "query_ms": (t2 - t1) / queries * 1000,
                     "index_mb": size / 2**20, "recall@10": recall, "top1_in_10": top1, "conf": dataclass_dict(conf)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def dataclass_dict(conf: IndexConf) -> dict:
    return {k: getattr(conf, k) for k in ("kind", "nlist", "m", "nbits", "nprobe", "hnsw_m", "ef_search")}


def markdown(rows: list[dict]) -> str:
    """Markdown table of the measured configurations."""
    lines = ["| n | d | kind | build s | query ms | index MB | recall@10 | top1_in_10 |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['kind']} | {r['build_s']:.2f} | {r['query_ms']:.3f} | "
                     f"{r['index_mb']:.1f} | {r['recall@10']:.3f} | {r['top1_in_10']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=["ivfpq", "hnsw"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="4,000 vectors of dimension 32, 50 queries")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dims, args.queries = [4000], [32], 50
    faiss.omp_set_num_threads(args.threads)
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    rows: list[dict] = []
    for n in args.sizes:
        for d in args.dims:
            if n * d * 4 * 2 > budget:  # data + the flat index's copy
                print(json.dumps({"n": n, "d": d, "skipped": "does not fit in half the memory"}))
                continue
            rows += run(n, d, args.queries, args.kinds)
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
