"""Event-VPR training step time on this CPU: representation x input size, on a real event drive folder.

Usage: python benchmarks/bench_event_vpr_train.py --root DRIVE [--threads 2] [--steps 3] [--batch 4]
                                                 [--negatives 10] [--rows est:9:224,voxel-grid:9:160 ...]
                                                 [--out outputs/bench_event_vpr_train.json]

A row is ``representation:bins:input_size``. Each row builds the recipe's module (``train.event_vpr``) with
the default conf but those values, opens ``--root``'s places (30,000-event windows every 2 m), and times
``--steps`` optimiser steps after one untimed one: mining from the cache (no refresh inside the timed
steps: the cache is filled first and its refresh cost is reported apart, per window), reading the
``B (2 + K)`` windows (the window LRU on, as in training), the representation, one forward and backward
pass, Adam. ``encode_ms_per_window``: one no-grad eval-mode descriptor, what a cache refresh and a
validation pay per place. Random weights (speed does not depend on them); no NetVLAD k-means.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from visloc.conf import apply_overrides
from visloc.train.event_vpr.conf import EventVPRTrainConf, check_conf
from visloc.train.event_vpr.module import EventVPRTrainModule


def time_row(root: str, representation: str, bins: int, size: int, steps: int, batch: int, negatives: int
             ) -> dict[str, float | str | int]:
    """Median seconds per optimiser step and ms per no-grad window descriptor of one row."""
    conf = check_conf(apply_overrides(EventVPRTrainConf(), {
        "data": {"roots": [root]}, "val": {"every": 0},
        "model": {"arch": {"representation": representation, "bins": bins, "input_size": size}},
        "mining": {"num_negatives": negatives, "candidates": max(negatives, 64), "refresh_every": 10_000},
        "train": {"batch_size": batch}}))
    torch.manual_seed(0)
    module = EventVPRTrainModule(conf, Path("."))
    module.open_training_data()
    cache, pairs = module.cache, module.pairs
    if cache is None or pairs is None:
        raise RuntimeError("no training data")
    t0 = time.perf_counter()
    cache.refresh(module.encode, 0)
    encode_ms = 1000 * (time.perf_counter() - t0) / len(cache.rows)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times = []
    module.train()
    for i in range(steps + 1):
        ids = rng.choice(len(pairs), batch, replace=False)
        t0 = time.perf_counter()
        loss = module.triplet_forward(ids)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return {"row": f"{representation}:{bins}:{size}", "step_s": float(np.median(times)),
            "encode_ms_per_window": encode_ms, "windows_per_step": batch * (2 + negatives)}


def main() -> None:
    """Parse the arguments, time every row, print a table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--negatives", type=int, default=10)
    ap.add_argument("--rows", default="est:9:224,voxel-grid:9:224,est:9:160,voxel-grid:9:160,est:9:128,"
                                      "voxel-grid:9:128")
    ap.add_argument("--out", default="outputs/bench_event_vpr_train.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = []
    for spec in a.rows.split(","):
        rep, bins, size = spec.split(":")
        r = time_row(a.root, rep, int(bins), int(size), a.steps, a.batch, a.negatives)
        print(f"{r['row']:>18}  {r['step_s']:6.2f} s/step ({r['windows_per_step']} windows)  "
              f"{r['encode_ms_per_window']:6.1f} ms/window no-grad", flush=True)
        results.append(r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"threads": a.threads, "batch": a.batch, "negatives": a.negatives,
                                       "root": a.root, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
