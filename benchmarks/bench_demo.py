"""Wall time of ``visloc demo`` on this machine, per stage, with the CPU time and the load it ran under.

Usage: python benchmarks/bench_demo.py [--out DIR] [--threads N] [--quick] [--method EXTRACTOR+MATCHER ...]
                                       [--set-scene KEY=VALUE ...]
Runs ``run_demo`` with its defaults (the test split of the default city, hfnet+nn-mutual and sift+nn-ratio) in
a fresh folder (``--out``, default a temporary one; a folder that holds a finished run is reused, so use a
new one to time the rendering and the maps), then prints a Markdown table: per stage the wall seconds and the
CPU seconds (user + system, this process and its workers), the load average before and after, and the demo's
recall table. On a machine shared with other jobs the wall time grows with the load; the CPU time is what
the demo itself needs (wall ~ CPU / 1.5 on an idle 2-core machine). Target: whole demo <= 180 s wall.
As ``visloc demo``, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless set (``--spin``: leave OpenMP's default).
``--quick``: one street segment at 320x240, 8 queries, one method (the whole code path; numbers mean little).
``--method``: the methods compared (as ``visloc demo --method``); ``--set-scene``: scene overrides (as
``visloc demo --set-scene``, e.g. ``streets=[3,36] num_queries=12`` for a third of the district). Per method,
the localization time per query (wall, and the mean of each stage from the localization log) and the database
images a query was matched with (those of the places tried) follow the table; ``--method X+M@kN`` retrieves N
images per query for that method.
To time code before and after a change in one run, call it twice with ``PYTHONPATH`` on the two source trees.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

if "--spin" not in sys.argv:  # before torch loads, as the demo command does
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from visloc.data.scene.city_conf import CityConf  # noqa: E402
from visloc.data.scene.city_scene import (
    CitySceneConf,  # noqa: E402
    load_city_scene_conf,  # noqa: E402
)
from visloc.pipelines.demo import DEFAULT_METHODS, DemoSummary, MethodResult, parse_method, run_demo  # noqa: E402

QUICK = CitySceneConf(city=CityConf(width=320, height=240, focal=250.0), streets=(3,), db_spacing_m=30.0,
                      num_queries=8)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _stages(summary: DemoSummary) -> list[tuple[str, float]]:
    rows = [("render", summary.seconds["render"])]
    for r in summary.methods:
        rows += [(f"{r.method.name}: map ({', '.join(f'{k} {v:.0f}' for k, v in r.map.seconds.items())})",
                  r.seconds["map"]), (f"{r.method.name}: localize", r.seconds["localize"]),
                 (f"{r.method.name}: picture", r.seconds["picture"])]
    return rows


def _matched_images(result: MethodResult) -> int:
    """Database images the queries were matched with: those of the places tried (up to the accepted one)."""
    tried = (q.places[: q.place + 1] if q.place is not None else q.places for q in result.localization.results)
    return sum(len(p) for places in tried for p in places)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="demo folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="a tiny world and one method")
    parser.add_argument("--spin", action="store_true", help="keep OpenMP's default wait policy (spinning)")
    parser.add_argument("--method", nargs="+", default=None, help="EXTRACTOR+MATCHER methods (default the demo's)")
    parser.add_argument("--set-scene", nargs="+", default=(), help="scene overrides key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scene, methods = (QUICK, DEFAULT_METHODS[:1]) if args.quick else (CitySceneConf(), DEFAULT_METHODS)
    if args.set_scene:
        scene = load_city_scene_conf(None, list(args.set_scene))
    if args.method:
        methods = tuple(parse_method(m) for m in args.method)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        load0, cpu0, wall0 = os.getloadavg(), _cpu(), time.perf_counter()
        summary = run_demo(out, scene=scene, methods=methods, progress=False)
        wall, cpu, load1 = time.perf_counter() - wall0, _cpu() - cpu0, os.getloadavg()
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}); {len(summary.scene.db_names)} database "
          f"and {len(summary.scene.query_names)} query frames; load average {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after")
    print("| stage | wall s |")
    print("|---|---:|")
    for name, seconds in _stages(summary):
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **whole demo** (CPU {cpu:.0f} s) | {wall:.1f} |")
    print()
    for r in summary.methods:
        n = max(len(r.localization.results), 1)
        stages = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in r.localization.mean_seconds().items())
        print(f"{r.method.name}: localization {r.seconds['localize'] / n:.2f} s per query wall ({stages}); "
              f"{_matched_images(r) / n:.1f} database images matched per query")
    print()
    print(summary.condition_table())


if __name__ == "__main__":
    main()
