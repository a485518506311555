"""Matching one query with its 10 retrieved images: pair by pair, then in one ``match_many`` call, in one run.

Usage: python benchmarks/bench_match_many.py [--threads 2] [--runs 5] [--size 640 480] [--quick]
                                            [--matchers nn-mutual ...]
The 11 images are real photos (``skimage.data``, ``bench_batch.write_photos``) at ``--size``; the query is the
first. Per matcher (with the features it is used with in the demo and the map builder) it prints the median
wall time of matching the query with the other ten, pair by pair (the localizer before ``match_many``) and in
one call, with the load average before and after. ``--quick``: 320x240, one run, the nearest-neighbour rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from visloc.io import features_h5
from visloc.matching import MATCHERS
from visloc.pipelines.bench import machine_line
from visloc.pipelines.extract import extract_features

sys.path.insert(0, str(Path(__file__).parent))
from bench_batch import write_photos  # noqa: E402

#: (matcher, extractor, extractor overrides)
ROWS = (("nn-mutual", "hfnet", {"max_num_keypoints": 1024}), ("nn-ratio", "sift", {"max_num_keypoints": 2048}),
        ("lighterglue", "xfeat", {"max_num_keypoints": 1024}), ("lightglue", "aliked-n16", {}))


def _median_ms(fn, runs: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--quick", action="store_true", help="320x240, one run, nearest neighbours only")
    parser.add_argument("--matchers", nargs="+", default=None, help="only these rows' matchers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = ROWS[:2] if args.quick else [r for r in ROWS if args.matchers is None or r[0] in args.matchers]
    if args.quick:
        args.size, args.runs = (320, 240), 1
    load0 = os.getloadavg()[0]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        names = write_photos(root, 11, tuple(args.size))
        for matcher_name, extractor, ov in rows:
            path = Path(tmp) / f"{extractor}.h5"
            extract_features(root, path, extractor=extractor, overrides=ov, progress=False)
            query, *db = [features_h5.load_features(path, n) for n in names]
            matcher = MATCHERS.build(matcher_name)
            times = {"pairs": _median_ms(lambda m=matcher, q=query, d=db: [m(q, f) for f in d], args.runs),
                     "one call": _median_ms(lambda m=matcher, q=query, d=db: m.match_many(q, d), args.runs)}
            lines.append(f"| {extractor} + {matcher_name} | {query.num_keypoints} | {times['pairs']:.1f} | "
                         f"{times['one call']:.1f} | {times['pairs'] / times['one call']:.2f}x |")
    print(f"# {machine_line(args.threads)}; query vs 10 photos at {args.size[0]}x{args.size[1]}; load average "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| features + matcher | query keypoints | pair by pair ms | one call ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
