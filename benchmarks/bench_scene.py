"""Rendering speed of the built-in worlds (visloc.data.scene): the old street and the city, at 640x480 and 346x260.

Usage: python benchmarks/bench_scene.py [--frames 48] [--threads 1 2] [--sizes 640x480 346x260] [--quick]

Views: the street's database trajectory and smooth walk (60 m street, 53 planes); the city's street-level views
(``sample_street_pose`` over all splits) looking along the streets (heading within 15 degrees of the street) and
at any heading, on the default ``CityConf`` (about 1,500 planes). The focal length scales with the width (500 px
at 640), so both sizes see the same field of view. Every view is rendered once untimed first, so that the city's
lazy textures are made (that cost, ``first frame ms``, is reported apart) and then timed: ``fps`` is the median
wall-clock rate, ``cpu fps`` the median rate in process CPU time (the better measure on a shared machine), for each
number of OpenCV threads. ``kept`` is the median number of planes kept by the world-level culling per frame.
Targets: >= 30 fps at 640x480 and >= 100 fps at 346x260 in the city, single process.
``--quick``: 2 frames, 1 thread (the whole code path in seconds; the numbers mean little).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from visloc.data.scene import SceneConf, build_world, db_poses, intrinsics, render, smooth_walk
from visloc.data.scene.city import City, build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import sample_street_pose
from visloc.data.scene.cull import PlaneWorld, cull, far_default, plane_table
from visloc.data.scene.places import SPLITS
from visloc.io.poses import CameraPose


def city_views(city: City, n: int, yaw_deg: float, seed: int) -> list[CameraPose]:
    """``n`` street-level poses, the splits in turn, heading within ``yaw_deg`` of the street's direction."""
    rng = np.random.default_rng(seed)
    return [sample_street_pose(city, rng, SPLITS[i % len(SPLITS)], yaw_deg=yaw_deg)[0] for i in range(n)]


def measure(world: PlaneWorld, poses: Sequence[CameraPose], size: tuple[int, int]) -> dict[str, float]:
    """Median fps (wall and CPU), median first-frame time (ms) and median planes kept by culling."""
    W, H = size
    K = intrinsics(500.0 * W / 640, W, H)
    wall, cpu, first, kept = [], [], [], []
    table = plane_table(world)
    for pose in poses:
        t0 = time.perf_counter()
        render(world, K, pose, size=size)  # makes the textures it needs
        first.append(time.perf_counter() - t0)
        w0, c0 = time.perf_counter(), time.process_time()
        render(world, K, pose, size=size)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        kept.append(len(cull(table, K, pose, size, world.conf.near_m, far_default(world)).index))
    return {"fps": 1.0 / float(np.median(wall)), "cpu fps": 1.0 / max(float(np.median(cpu)), 1e-9),
            "first": 1000.0 * float(np.median(first)), "kept": float(np.median(kept))}


def cases(frames: int) -> list[tuple[str, str, PlaneWorld, Callable[[], list[CameraPose]]]]:
    """(world, views, world object, poses) for every row of the table."""
    conf = SceneConf()
    street = build_world(conf)
    city = build_city(CityConf())
    return [
        ("street", "db trajectory", street, lambda: db_poses(conf)[:frames]),
        ("street", "smooth walk", street, lambda: smooth_walk(conf, frames)),
        ("city", "along streets", city, lambda: city_views(city, frames, 15.0, seed=0)),
        ("city", "any heading", city, lambda: city_views(city, frames, 180.0, seed=1)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "346x260"])
    parser.add_argument("--quick", action="store_true", help="2 frames, 1 thread")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.threads = 2, [1]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    rows = cases(args.frames)
    planes = {name: len(world.planes) for name, _, world, _ in rows}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, cv2 {cv2.__version__}, "
          f"median over {args.frames} frames; street {planes['street']} planes, city {planes['city']} planes")
    print("| world | views | size | threads | fps | cpu fps | first frame ms | kept |")
    print("|---|---|---|---|---|---|---|---|")
    for name, views, world, make_poses in rows:
        poses = make_poses()
        for W, H in sizes:
            for threads in args.threads:
                cv2.setNumThreads(threads)
                r = measure(world, poses, (W, H))
                print(f"| {name} | {views} | {W}x{H} | {threads} | {r['fps']:.1f} | {r['cpu fps']:.1f} | "
                      f"{r['first']:.1f} | {r['kept']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
