"""Hierarchical localization on ViSP Castle-simu: map every other frame, localize the held-out frames.

Usage: python benchmarks/localize_castle.py [--step 2] [--extractor vlad-aliked] [--matcher lightglue]
           [--set-extractor max_num_keypoints=1024] [--pairs 5] [--top-k 5] [--work outputs/castle_loc]
           [--threads 2] [--out outputs/localize_castle.json]

Needs Debian's visp-images-data. Prints a Markdown table: recall at Aachen's thresholds scaled to the
scene (``localization.datasets.CASTLE_THRESHOLDS``), median errors, map size, and the mean time per
query of each stage (global retrieval, local features, matching, PnP), and the map-building time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from visloc.eval.localization import evaluate_poses
from visloc.io.poses import read_poses
from visloc.localization.datasets import CASTLE_THRESHOLDS, castle_split
from visloc.localization.localize import LocalizerConf
from visloc.pipelines.localize import localize_queries
from visloc.pipelines.map_build import build_map


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step", type=int, default=2, help="every step-th frame is mapped, the others are queries")
    p.add_argument("--extractor", default="vlad-aliked")
    p.add_argument("--matcher", default="lightglue")
    p.add_argument("--set-extractor", nargs="*", default=[])
    p.add_argument("--set-matcher", nargs="*", default=[])
    p.add_argument("--pairs", type=int, default=5, help="neighbours matched per database image")
    p.add_argument("--top-k", type=int, default=5, help="database images retrieved per query")
    p.add_argument("--work", type=Path, default=Path("outputs/castle_loc"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work, ignore_errors=True)
    split = castle_split(args.work / "data", args.step)
    start = time.perf_counter()
    summary = build_map(split.db_images, args.work / "map", poses=split.db_poses, cameras=split.db_cameras,
                        extractor=args.extractor, extractor_overrides=args.set_extractor, matcher=args.matcher,
                        matcher_overrides=args.set_matcher, num_pairs=args.pairs, progress=False)
    map_seconds = time.perf_counter() - start
    result = localize_queries(args.work / "map", split.query_images, args.work / "poses.txt",
                              cameras=split.query_cameras, conf=LocalizerConf(num_retrieved=args.top_k),
                              progress=False)
    failed = [r.name for r in result.results if not r.ok]
    report = evaluate_poses(split.ground_truth, read_poses(args.work / "poses.txt"), CASTLE_THRESHOLDS, failed)
    times = result.mean_seconds()
    ok = np.isfinite(report.position_errors)
    med_pos = float(np.median(report.position_errors[ok])) if ok.any() else float("nan")
    med_rot = float(np.median(report.rotation_errors[ok])) if ok.any() else float("nan")
    heads = [f"{p * 1000:g} mm, {r:g} deg" for p, r in CASTLE_THRESHOLDS]
    print(f"Castle-simu, {len(split.ground_truth)} queries, map of {summary.num_registered} images "
          f"({summary.num_points} points, built in {map_seconds:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in summary.seconds.items()) + ")\n")
    print("| method | " + " | ".join(heads) + " | median pos (mm) | median rot (deg) | failed |")
    print("|---" * (len(heads) + 4) + "|")
    print(f"| {args.extractor} + {args.matcher} | " + " | ".join(f"{100 * r:.1f}" for r in report.recall)
          + f" | {med_pos * 1000:.2f} | {med_rot:.3f} | {len(failed)} |\n")
    print("| stage | mean ms / query |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds * 1000:.0f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recall": dict(zip(heads, report.recall, strict=True)), "median_position_m":
                                        med_pos, "median_rotation_deg": med_rot, "failed": failed,
                                        "map_seconds": map_seconds, "stage_seconds": times,
                                        "map": {"images": summary.num_registered, "points": summary.num_points}},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
