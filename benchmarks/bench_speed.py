"""Before/after of the ALIKED + LightGlue speed work, and the per-part table for the README.

Usage: python benchmarks/bench_speed.py [--threads 2] [--runs 10] [--out outputs/bench.json]
"before" is kornia's ALIKED forward (``sparse_descriptors=false``); "after" is visloc's default.
Each line runs in its own process (``visloc.pipelines.bench.run_one``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visloc.pipelines.bench import format_results, machine_line, results_json, run_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    common = {"size": (640, 480), "threads": args.threads, "runs": args.runs}
    results = [
        run_one("extract", "aliked-n16 (before: kornia forward)", extractor="aliked-n16",
                overrides=["sparse_descriptors=false"], **common),
        run_one("extract", "aliked-n16", extractor="aliked-n16", **common),
        run_one("extract", "aliked-n32", extractor="aliked-n32", **common),
        run_one("extract", "aliked-t16", extractor="aliked-t16", **common),
        run_one("extract", "disk", extractor="disk", **common),
        run_one("extract", "sift", extractor="sift", **common),
        run_one("extract", "rootsift", extractor="rootsift", **common),
        run_one("extract", "orb", extractor="orb", **common),
        run_one("match", "lightglue", extractor="aliked-n16", **common),
        run_one("match", "lightglue", extractor="disk", **common),
        run_one("match", "nn-mutual", extractor="aliked-n16", **common),
        run_one("match", "nn-ratio", extractor="sift", **common),
        run_one("match", "nn-mutual", extractor="orb", **common),
    ]
    print(machine_line(args.threads))
    print(format_results(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine_line(args.threads), "results": results_json(results)},
                                       indent=1))


if __name__ == "__main__":
    main()
