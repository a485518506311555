"""Localize a finished demo's queries again against one method's map, under several localizer settings.

Usage: python benchmarks/localize_sweep.py DEMO_DIR METHOD [--conf "KEY=VALUE ..." ...] [--threads N]

``DEMO_DIR`` is a ``visloc demo`` (or ``bench_demo.py --out``) folder and ``METHOD`` one of its method folders
(``vlad-xfeat+lighterglue@k3``). Each ``--conf`` is one ``LocalizerConf`` (space-separated overrides of the
method's own localizer, e.g. ``"max_error=4"`` or ``"num_retrieved=2 max_places=1"``; an empty string: the
method's as it is). The map is not rebuilt: the poses of each setting are written in
``DEMO_DIR/METHOD/sweep/<n>/``. Prints one Markdown row per setting: wall seconds per query, the mean of each
stage from the log, recall at the demo's thresholds, localized queries, and the median errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the demo command does

import torch  # noqa: E402

from visloc.conf import apply_overrides  # noqa: E402
from visloc.eval.localization import DEFAULT_THRESHOLDS, evaluate_poses, read_log  # noqa: E402
from visloc.io.poses import read_poses  # noqa: E402
from visloc.pipelines.demo import DEMO_LOCALIZER, parse_method  # noqa: E402
from visloc.pipelines.localize import localize_queries  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("demo", type=Path, help="demo output folder")
    parser.add_argument("method", help="method folder in it (EXTRACTOR+MATCHER[@kN])")
    parser.add_argument("--conf", nargs="+", default=[""], help="localizer overrides, one string per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scene, folder = args.demo / "scene", args.demo / args.method
    if not (folder / "map").is_dir():
        sys.exit(f"{folder / 'map'}: no map (run the demo with --method {args.method} first)")
    base = parse_method(args.method).localizer(DEMO_LOCALIZER)
    gt = read_poses(scene / "poses_query.txt")
    queries = sorted(gt)
    print(f"# load average {os.getloadavg()[0]:.1f}; {args.method}, {len(queries)} queries")
    print("| localizer overrides | s / query | local / global / matching / pnp (ms) | recall (%) | localized "
          "| median m, deg |")
    print("|---|---:|---|---|---:|---|")
    for i, spec in enumerate(args.conf):
        conf = apply_overrides(base, spec.split()) if spec.strip() else base
        out = folder / "sweep" / str(i)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        loc = localize_queries(folder / "map", scene, out / "poses.txt", cameras=scene / "cameras.txt", conf=conf,
                               image_list=queries, log=out / "poses.log.jsonl", progress=False)
        wall = (time.perf_counter() - start) / len(queries)
        records = read_log(loc.log)
        failed = [r["name"] for r in records if not r.get("success", False)]
        rep = evaluate_poses(gt, read_poses(loc.out), DEFAULT_THRESHOLDS, failed)
        stages = " / ".join(f"{1000 * loc.mean_seconds().get(k, 0.0):.0f}" for k in ("local", "global", "matching",
                                                                                    "pnp"))
        med = rep.median_errors()
        recall = " / ".join(f"{100 * r:.1f}" for r in rep.recall)
        changed = {k: v for k, v in dataclasses.asdict(conf).items() if v != getattr(DEMO_LOCALIZER, k)}
        print(f"| {spec or '(method)'} {changed} | {wall:.2f} | {stages} | {recall} | {int(rep.localized.sum())} "
              f"| {med[0]:.3f}, {med[1]:.2f} |", flush=True)
        errs = ", ".join(f"{n.split('/')[-1]} {p:.2f}" for n, p in zip(rep.names, rep.position_errors, strict=True)
                         if not p <= DEFAULT_THRESHOLDS[0][0])
        print(f"|   outside {DEFAULT_THRESHOLDS[0][0]} m: {errs or 'none'} |||||", flush=True)


if __name__ == "__main__":
    main()
