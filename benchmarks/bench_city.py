"""The procedural city (visloc.data.scene.city): its size, build time, texture cost, and split purity of street views.

Usage: python benchmarks/bench_city.py [--views 60] [--size 160 120] [--seed 0] [--quick]

Prints the default city's places (by kind), street length, build time, then for each split the acceptance rate of
``sample_street_pose`` views (default offsets) whose rendered place ids show no place of another split
(``foreign_fraction == 0``), the mean foreign fraction, texture cache use and time per view. Views are rendered at
``--size`` with the focal scaled so the field of view is that of the default 640x480 camera, far clip
``CityConf.far_m``: planes farther than that or outside the view are left out before ``render`` (a stand-in for the
renderer's own culling).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter

import numpy as np

from visloc.data.scene.city import City, build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import foreign_fraction, sample_street_pose
from visloc.data.scene.places import SPLITS, Split
from visloc.data.scene.render import intrinsics, render
from visloc.io.poses import CameraPose


class Culler:
    """Keeps the planes that can show in a view: in front, within ``far`` metres, not outside a side plane."""

    def __init__(self, city: City) -> None:
        self.city = city
        self.o = np.stack([p.origin for p in city.planes])
        self.u = np.stack([p.u * p.size_m[0] for p in city.planes])
        self.v = np.stack([p.v * p.size_m[1] for p in city.planes])
        self.corners = np.stack([self.o, self.o + self.u, self.o + self.u + self.v, self.o + self.v], 1)  # [N,4,3]

    def __call__(self, K: np.ndarray, pose: CameraPose, size: tuple[int, int], far: float) -> list[int]:
        c = -pose.R.T @ pose.t
        d = c - self.o
        a = np.clip(np.einsum("nk,nk->n", d, self.u) / np.einsum("nk,nk->n", self.u, self.u), 0, 1)
        b = np.clip(np.einsum("nk,nk->n", d, self.v) / np.einsum("nk,nk->n", self.v, self.v), 0, 1)
        near_pt = self.o + a[:, None] * self.u + b[:, None] * self.v
        keep = np.linalg.norm(near_pt - c, axis=1) <= far
        cam = self.corners @ pose.R.T + pose.t  # [N, 4, 3]
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        W, H = size
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        for side in (x + z * (cx + 1) / fx, z * (W - cx) / fx - x, y + z * (cy + 1) / fy, z * (H - cy) / fy - y,
                     z):
            keep &= (side > 0).any(axis=1)
        return np.flatnonzero(keep).tolist()


def split_purity(city: City, split: Split, views: int, size: tuple[int, int], seed: int) -> dict[str, float]:
    conf = city.conf
    scale = size[0] / conf.width
    K = intrinsics(conf.focal * scale, *size)
    cull = Culler(city)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    fractions, seconds = [], []
    for _ in range(views):
        pose, _ = sample_street_pose(city, rng, split)
        t0 = time.perf_counter()
        keep = cull(K, pose, size, conf.far_m)
        sub = dataclasses.replace(city, planes=tuple(city.planes[k] for k in keep))
        frame = render(sub, K, pose, size=size)
        lut = np.array([city.planes[k].place_id for k in keep] + [-1], np.int32)
        ids = lut[np.where(frame.plane_index >= 0, frame.plane_index, len(lut) - 1)]
        seconds.append(time.perf_counter() - t0)
        fractions.append(foreign_fraction(ids, city, split))
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
