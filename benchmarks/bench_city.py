"""The procedural city (visloc.data.scene.city): its size, build time, texture cost, and split purity of street views.

Usage: python benchmarks/bench_city.py [--views 60] [--size 160 120] [--seed 0] [--quick]

Prints the default city's places (by kind), street length, build time, then for each split the acceptance rate of
``sample_street_pose`` views (default offsets) whose rendered place ids show no place of another split
(``foreign_fraction == 0``), the mean foreign fraction, texture cache use and time per view. Views are rendered at
``--size`` with the focal scaled so the field of view is that of the default 640x480 camera, far clip
``CityConf.far_m`` (the renderer's default for a city). Time per view includes making the textures it needs.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from visloc.data.scene.city import City, build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import foreign_fraction, sample_street_pose
from visloc.data.scene.places import SPLITS, Split
from visloc.data.scene.render import intrinsics, render


def split_purity(city: City, split: Split, views: int, size: tuple[int, int], seed: int) -> dict[str, float]:
    conf = city.conf
    scale = size[0] / conf.width
    K = intrinsics(conf.focal * scale, *size)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    fractions, seconds = [], []
    for _ in range(views):
        pose, _ = sample_street_pose(city, rng, split)
        t0 = time.perf_counter()
        frame = render(city, K, pose, size=size)
        seconds.append(time.perf_counter() - t0)
        fractions.append(foreign_fraction(frame.place_id, city, split))
    f = np.array(fractions)
    return {"accept": float((f == 0).mean()), "mean_foreign": float(f.mean()), "p95_foreign": float(
        np.quantile(f, 0.95)), "s_per_view": float(np.median(seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--size", type=int, nargs=2, default=[160, 120])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 views per split")
    args = parser.parse_args()
    views = 3 if args.quick else args.views
    conf = CityConf(seed=args.seed)
    t0 = time.perf_counter()
    city = build_city(conf)
    build_s = time.perf_counter() - t0
    kinds = Counter(p.kind for p in city.places)
    print(f"# default CityConf(seed={args.seed}): {len(city.places)} places {dict(kinds)}, {len(city.planes)} planes, "
          f"{len(city.streets)} street segments, {city.street_length_m:.0f} m of street, {len(city.blocks)} blocks, "
          f"built in {build_s:.2f} s")
    print(f"# views: sample_street_pose defaults, {views} per split, {args.size[0]}x{args.size[1]}")
    print("| split | places | streets | accepted (foreign == 0) | mean foreign | p95 foreign | s / view |")
    print("|---|---|---|---|---|---|---|")
    for split in SPLITS:
        r = split_purity(city, split, views, (args.size[0], args.size[1]), args.seed)
        print(f"| {split} | {len(city.places_of(split))} | {len(city.streets_of(split))} | {100 * r['accept']:.1f} % "
              f"| {r['mean_foreign']:.4f} | {r['p95_foreign']:.4f} | {r['s_per_view']:.2f} |")
    tex = city.textures
    print(f"# texture cache: {len(tex)} pyramids, {tex.bytes / 2**20:.0f} MiB held (bound {tex.max_bytes / 2**20:.0f}"
          f" MiB), {tex.misses} made, {tex.hits} hits")


if __name__ == "__main__":
    main()
