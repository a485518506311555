"""Hierarchical localization on ViSP Castle-simu: map every other frame, localize the held-out frames.

Usage: python benchmarks/localize_castle.py [--step 2] [--extractor vlad-aliked] [--matcher lightglue]
           [--retrieval vlad-aliked] [--rows EXTRACTOR+MATCHER[@RETRIEVAL] ...]
           [--set-extractor max_num_keypoints=1024] [--pairs 5] [--top-k 5] [--work outputs/castle_loc]
           [--max-queries N] [--threads 2] [--out outputs/localize_castle.json] [--quick]

Needs Debian's visp-images-data. Each row is one method: a map built with its local extractor and matcher
(``pipelines.map_build.build_map``, the known poses of the mapped frames), then the queries localized in it
(``pipelines.localize.localize_queries``). Without ``--rows``, one row of ``--extractor`` + ``--matcher``
(default ``vlad-aliked + lightglue``). ``--rows`` gives several, built and localized one after the other in
the same run, e.g. ``--rows vlad-aliked+lightglue vlad-xfeat+lighterglue xfeat+lighterglue@vlad-aliked``.
``@RETRIEVAL`` (or ``--retrieval``, default ``vlad-aliked``) names the global extractor used for retrieval
when the local extractor gives no global descriptor (``xfeat``); a ``vlad-*`` extractor retrieves with its own
VLAD, and the row's name says which retrieval ran. ``--set-extractor`` / ``--set-matcher`` apply to every row.

Prints two Markdown tables: per method, recall at Aachen's thresholds scaled to the scene
(``localization.datasets.CASTLE_THRESHOLDS``), median errors of the posed queries and the number failed; then
per method the mean time per query of each stage (global retrieval, local features, matching, PnP), the map's
size and its build time. The JSON report (``--out``) holds the same per row (``rows``).
``--quick``: 5 mapped frames, 2 queries, 512 keypoints, 2 pairs and 2 retrieved images,
in a temporary folder unless ``--work`` / ``--out`` (the whole code path in seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visloc.eval.localization import evaluate_poses
from visloc.io.poses import read_poses
from visloc.localization.datasets import CASTLE_THRESHOLDS, LocalizationSplit, castle_split
from visloc.localization.localize import LocalizerConf
from visloc.pipelines.localize import localize_queries
from visloc.pipelines.map_build import DEFAULT_RETRIEVAL, build_map

QUICK = {"step": 8, "max_queries": 2, "pairs": 2, "top_k": 2, "set_extractor": ["max_num_keypoints=512"]}
HEADS = [f"{p * 1000:g} mm, {r:g} deg" for p, r in CASTLE_THRESHOLDS]


@dataclass(frozen=True)
class Row:
    """One method of the table: local extractor, matcher, and the global extractor when the local gives none."""

    extractor: str
    matcher: str
    retrieval: str = DEFAULT_RETRIEVAL

    @classmethod
    def parse(cls, spec: str) -> Row:
        """``EXTRACTOR+MATCHER[@RETRIEVAL]`` -> a row.

        Raises:
            ValueError: ``spec`` is not of that form.
        """
        method, _, retrieval = spec.partition("@")
        extractor, _, matcher = method.partition("+")
        if not extractor or not matcher or "+" in matcher or (("@" in spec) and not retrieval):
            raise ValueError(f"--rows: expected EXTRACTOR+MATCHER[@RETRIEVAL], got {spec!r}")
        return cls(extractor, matcher, retrieval or DEFAULT_RETRIEVAL)

    @property
    def slug(self) -> str:
        """A folder name of the row."""
        return f"{self.extractor}+{self.matcher}@{self.retrieval}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", type=int, default=2, help="every step-th frame is mapped, the others are queries")
    p.add_argument("--extractor", default=None, help="local extractor of the single row (default vlad-aliked)")
    p.add_argument("--matcher", default=None, help="matcher of the single row (default lightglue)")
    p.add_argument("--retrieval", default=None, help=f"global extractor when the local gives none "
                                                     f"(default {DEFAULT_RETRIEVAL})")
    p.add_argument("--rows", nargs="+", default=None, metavar="EXTRACTOR+MATCHER[@RETRIEVAL]",
                   help="several methods in one run (instead of --extractor / --matcher / --retrieval)")
    p.add_argument("--set-extractor", nargs="*", default=[])
    p.add_argument("--set-matcher", nargs="*", default=[])
    p.add_argument("--pairs", type=int, default=5, help="neighbours matched per database image")
    p.add_argument("--top-k", type=int, default=5, help="database images retrieved per query")
    p.add_argument("--max-queries", type=int, default=None, help="at most this many queries, evenly spaced")
    p.add_argument("--work", type=Path, default=None, help="default outputs/castle_loc (quick: temporary)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON report (quick: in the work folder)")
    p.add_argument("--quick", action="store_true", help="5 mapped frames, 2 queries, 512 keypoints")
    args = p.parse_args()
    if args.rows is not None and (args.extractor or args.matcher or args.retrieval):
        p.error("give --rows or --extractor / --matcher / --retrieval, not both")
    try:
        rows = [Row.parse(s) for s in (args.rows or [])] or [
            Row(args.extractor or "vlad-aliked", args.matcher or "lightglue", args.retrieval or DEFAULT_RETRIEVAL)]
    except ValueError as e:
        p.error(str(e))
    if len({r.slug for r in rows}) != len(rows):
        p.error("--rows: a method given twice")
    if args.quick:
        vars(args).update(QUICK)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="visloc-castle-loc-") as tmp:
        work = args.work or (Path(tmp) / "work" if args.quick else Path("outputs/castle_loc"))
        out = args.out or (work / "localize_castle.json" if args.quick else None)
        run(args, rows, work, out)


def run_row(args: argparse.Namespace, row: Row, split: LocalizationSplit, work: Path) -> dict:
    """Build the row's map in ``work``, localize the queries; its report (the JSON report's row)."""
    start = time.perf_counter()
    summary = build_map(split.db_images, work / "map", poses=split.db_poses, cameras=split.db_cameras,
                        extractor=row.extractor, extractor_overrides=args.set_extractor, matcher=row.matcher,
                        matcher_overrides=args.set_matcher, retrieval=row.retrieval, num_pairs=args.pairs,
                        progress=False)
    map_seconds = time.perf_counter() - start
    retrieval = json.loads((work / "map" / "map.json").read_text())["retrieval"]["name"]
    result = localize_queries(work / "map", split.query_images, work / "poses.txt", cameras=split.query_cameras,
                              conf=LocalizerConf(num_retrieved=args.top_k), progress=False)
    failed = [r.name for r in result.results if not r.ok]
    report = evaluate_poses(split.ground_truth, read_poses(work / "poses.txt"), CASTLE_THRESHOLDS, failed)
    ok = np.isfinite(report.position_errors)
    method = f"{row.extractor} + {row.matcher}" + (f" ({retrieval} retrieval)" if retrieval != row.extractor else "")
    return {"method": method, "retrieval": retrieval, "recall": dict(zip(HEADS, report.recall, strict=True)),
            "median_position_m": float(np.median(report.position_errors[ok])) if ok.any() else float("nan"),
            "median_rotation_deg": float(np.median(report.rotation_errors[ok])) if ok.any() else float("nan"),
            "failed": failed, "map_seconds": map_seconds, "map_stage_seconds": dict(summary.seconds),
            "stage_seconds": result.mean_seconds(),
            "map": {"images": summary.num_registered, "points": summary.num_points}}


def run(args: argparse.Namespace, rows: list[Row], work: Path, out: Path | None) -> None:
    """Build each row's map, localize the queries, print the tables and write the JSON report to ``out``."""
    shutil.rmtree(work, ignore_errors=True)
    split = castle_split(work / "data", args.step, max_queries=args.max_queries)
    reports = []
    for row in rows:
        reports.append(run_row(args, row, split, work / row.slug))
        print(f"{reports[-1]['method']}: done", file=sys.stderr, flush=True)
    print(f"Castle-simu, {len(split.ground_truth)} queries, one frame in {args.step} mapped, {args.pairs} pairs "
          f"per image, top-{args.top_k} retrieval, torch threads {args.threads}\n")
    print("| method | " + " | ".join(HEADS) + " | median pos (mm) | median rot (deg) | failed |")
    print("|---" * (len(HEADS) + 4) + "|")
    for r in reports:
        print(f"| {r['method']} | " + " | ".join(f"{100 * v:.1f}" for v in r["recall"].values())
              + f" | {r['median_position_m'] * 1000:.2f} | {r['median_rotation_deg']:.3f} | {len(r['failed'])} |")
    stages = list(reports[0]["stage_seconds"])
    print("\n| method | " + " | ".join(f"{s} ms / query" for s in stages) + " | map images | map points | map s |")
    print("|---" * (len(stages) + 4) + "|")
    for r in reports:
        print(f"| {r['method']} | " + " | ".join(f"{r['stage_seconds'][s] * 1000:.0f}" for s in stages)
              + f" | {r['map']['images']} | {r['map']['points']} | {r['map_seconds']:.1f} |")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"report -> {out}", file=sys.stderr)
        out.write_text(json.dumps({"queries": len(split.ground_truth), "step": args.step, "rows": reports},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
