"""Feature store: cost of committing a few new images into stores of growing size, and of resuming.

Usage: python benchmarks/bench_store.py [--quick] [--sizes 1000 20000] [--new 10] [--kpts 256]
                                        [--dim 64] [--staged 5000] [--dir /tmp/bench_store]
                                        [--out outputs/bench_store.json]

For each existing size it builds a self-contained feature file (hloc's layout; ``kpts`` keypoints of
``dim``-D float16 descriptors per image) and, from it, a sharded store (one commit adopts the file).
It then stages ``new`` images and commits them (median of 3 commits, each into the store left by the
previous one), with:

- ``copy``: the former commit (``parts.merge_parts``: copy the whole file, append, rename);
- ``sharded``: ``shards.commit`` (new shard + copy of the small master of links).

``bytes`` is what a commit copies or publishes (sizes passed to ``shutil.copyfile`` and
``os.replace``). It also times listing the file's names and the staged names of ``staged`` parts
(from the name index, and without it: one ``__name__`` member read per part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import h5py
import numpy as np

from visloc.io import features_h5, parts, shards


def _feats(rng: np.random.Generator, kpts: int, dim: int) -> dict[str, np.ndarray]:
    return {"keypoints": rng.uniform(0, 1000, (kpts, 2)).astype(np.float32),
            "scores": rng.uniform(0, 1, kpts).astype(np.float32),
            "descriptors": rng.standard_normal((kpts, dim)).astype(np.float32)}


def build_file(path: Path, n: int, kpts: int, dim: int) -> None:
    """A self-contained file of ``n`` images, written directly (as hloc does)."""
    rng = np.random.default_rng(0)
    block = features_h5.to_storage(_feats(rng, kpts, dim), as_half=True)
    with h5py.File(path, "w", libver="latest") as fd:
        for i in range(n):
            parts.write_group(fd, f"db/{i // 1000:03d}/{i:07d}.jpg", block)


class ByteCounter:
    """Counts the bytes passed to ``shutil.copyfile`` and ``os.replace`` while active."""

    def __init__(self) -> None:
        self.total = 0
        self._copyfile, self._replace = shutil.copyfile, os.replace

    def __enter__(self) -> ByteCounter:
        def copyfile(src, dst):
            self.total += os.path.getsize(src)
            return self._copyfile(src, dst)

        def replace(src, dst):
            self.total += os.path.getsize(src)
            return self._replace(src, dst)

        shutil.copyfile, os.replace = copyfile, replace
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.copyfile, os.replace = self._copyfile, self._replace


def time_commits(path: Path, method: str, new: int, kpts: int, dim: int, repeats: int = 3) -> dict:
    rng = np.random.default_rng(1)
    seconds, written = [], []
    for r in range(repeats):
        for i in range(new):
            features_h5.stage_features(path, f"new/{r}/{i}.jpg", _feats(rng, kpts, dim), as_half=True)
        with ByteCounter() as counter:
            t = time.perf_counter()
            if method == "copy":
                parts.merge_parts(path, parts.write_group)
            else:
                shards.commit(path, parts.write_group)
            seconds.append(time.perf_counter() - t)
        written.append(counter.total)
    return {"seconds": statistics.median(seconds), "bytes": int(statistics.median(written))}


def time_listing(path: Path) -> float:
    t = time.perf_counter()
    features_h5.list_feature_names(path)
    return time.perf_counter() - t


def bench_size(folder: Path, n: int, new: int, kpts: int, dim: int) -> dict:
    base = folder / f"base-{n}.h5"
    build_file(base, n, kpts, dim)
    row: dict = {"existing": n, "file_mb": round(base.stat().st_size / 2**20, 1)}
    copy_path, sharded_path = folder / f"copy-{n}.h5", folder / f"sharded-{n}.h5"
    shutil.copyfile(base, copy_path)
    os.replace(base, sharded_path)
    features_h5.stage_features(sharded_path, "adopt.jpg", {"global_descriptor": np.zeros(4, np.float32)})
    shards.commit(sharded_path, parts.write_group)  # adopts the file as a base shard (a hard link)
    row["master_bytes_per_item"] = round(sharded_path.stat().st_size / (n + 1), 1)
    for method, path in (("copy", copy_path), ("sharded", sharded_path)):
        row[method] = time_commits(path, method, new, kpts, dim)
        row[method]["list_names_s"] = round(time_listing(path), 3)
    shards.remove(copy_path)
    shards.remove(sharded_path)
    return row


def bench_staged(folder: Path, n: int) -> dict:
    out = folder / "staged.h5"
    rng = np.random.default_rng(2)
    for i in range(n):
        parts.write_part(out, f"{i}.jpg", features_h5.to_storage(_feats(rng, 256, 64), as_half=True))
    t = time.perf_counter()
    counts = [len(parts.staged_names(out))]
    indexed = time.perf_counter() - t
    for index in parts.parts_dir(out).glob("index-*.tsv"):
        index.unlink()
    t = time.perf_counter()
    counts.append(len(parts.staged_names(out)))
    fallback = time.perf_counter() - t
    t = time.perf_counter()
    counts.append(sum(1 for _ in parts.staged_parts(out)))
    full = time.perf_counter() - t
    parts.discard(out)
    if counts != [n] * 3:
        raise RuntimeError(f"listed {counts} staged parts, staged {n}")
    return {"staged": n, "index_s": round(indexed, 3), "name_member_s": round(fallback, 3),
            "load_all_s (former listing)": round(full, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (200, 1000) and 500 staged parts")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20_000])
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--kpts", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--staged", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_store"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes, staged = ([200, 1000], 500) if args.quick else (args.sizes, args.staged)
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    result = {"sizes": [bench_size(args.dir, n, args.new, args.kpts, args.dim) for n in sizes],
              "staging": bench_staged(args.dir, staged),
              "per_image": {"kpts": args.kpts, "dim": args.dim, "new": args.new}}
    shutil.rmtree(args.dir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
