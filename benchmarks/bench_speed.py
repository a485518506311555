"""Before/after of the ALIKED + LightGlue speed work, and the per-part table for the README.

Usage: python benchmarks/bench_speed.py [--threads 2] [--runs 10] [--out outputs/bench.json] [--quick]
                                       [--rows WORD ...]
"before" is kornia's ALIKED forward (``sparse_descriptors=false``); "after" is visloc's default.
Each line runs in its own process (``visloc.pipelines.bench.run_one``); ``pair`` lines time an image matcher on
the two images. ``--quick``: one extractor, two matchers and one image matcher at 320x240, one run each (the
whole code path in seconds; the numbers mean little).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visloc.pipelines.bench import format_results, machine_line, results_json, run_one

#: (kind, row name, extractor, overrides[, extractor overrides of a match row]) of the full table
FULL = [
    ("extract", "aliked-n16 (before: kornia forward)", "aliked-n16", ("sparse_descriptors=false",)),
    ("extract", "aliked-n16", "aliked-n16", ()),
    ("extract", "aliked-n32", "aliked-n32", ()),
    ("extract", "aliked-t16", "aliked-t16", ()),
    ("extract", "disk", "disk", ()),
    ("extract", "sift", "sift", ()),
    ("extract", "rootsift", "rootsift", ()),
    ("extract", "orb", "orb", ()),
    ("extract", "xfeat", "xfeat", ()),
    ("extract", "xfeat (1024 keypoints)", "xfeat", ("max_num_keypoints=1024",)),
    ("match", "lightglue", "aliked-n16", ()),
    ("match", "lightglue", "disk", ()),
    ("match", "nn-mutual", "aliked-n16", ()),
    ("match", "nn-ratio", "sift", ()),
    ("match", "nn-mutual", "orb", ()),
    ("match", "lighterglue", "xfeat", ()),
    ("match", "lighterglue", "xfeat", (), ("max_num_keypoints=1024",)),
    ("match", "nn-mutual", "xfeat", ()),
    ("pair", "xfeat-star", "", ()),
]
QUICK = [
    ("extract", "sift", "sift", ()),
    ("match", "nn-ratio", "sift", ()),
    ("match", "lightglue", "aliked-n16", ()),
    ("pair", "xfeat-star", "", ()),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="4 lines at 320x240, 1 run each")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only the full table's rows whose name or extractor contains one of these words")
    args = parser.parse_args()
    rows = QUICK if args.quick else FULL
    if args.rows:
        rows = [r for r in rows if any(w in r[1] or w in r[2] for w in args.rows)]
    size, warmup, runs = ((320, 240), 0, 1) if args.quick else ((640, 480), 2, args.runs)
    results = [run_one(kind, name, extractor=extractor, overrides=overrides,
                       extractor_overrides=rest[0] if rest else (), size=size, threads=args.threads, warmup=warmup,
                       runs=runs)
               for kind, name, extractor, overrides, *rest in rows]
    print(machine_line(args.threads))
    print(format_results(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine_line(args.threads), "results": results_json(results)},
                                       indent=1))


if __name__ == "__main__":
    main()
