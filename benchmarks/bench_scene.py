"""Rendering speed of the built-in street scene (visloc.data.scene) at 640x480.

Usage: python benchmarks/bench_scene.py [--frames 48] [--threads 1 2] [--quick]
Renders the database trajectory (and the smooth walk used for event streams) and prints the median
frames per second for each number of OpenCV threads (the renderer is cv2 + numpy). Target: >= 10 fps.
``--quick``: 2 frames, 1 thread (the whole code path in seconds; the numbers mean little).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from visloc.data.scene import SceneConf, build_world, db_poses, intrinsics, render, smooth_walk


def measure(threads: int, frames: int) -> dict[str, float]:
    cv2.setNumThreads(threads)
    conf = SceneConf()
    world = build_world(conf)
    K = intrinsics(conf.focal, conf.width, conf.height)
    out = {}
    for label, poses in (("db", db_poses(conf)), ("walk", smooth_walk(conf, frames))):
        render(world, K, poses[0])  # warm-up
        times = []
        for pose in poses[:frames]:
            t0 = time.perf_counter()
            render(world, K, pose)
            times.append(time.perf_counter() - t0)
        out[label] = 1.0 / float(np.median(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="2 frames, 1 thread")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.threads = 2, [1]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, cv2 {cv2.__version__}, "
          f"640x480, median over {args.frames} frames")
    print("| threads | db trajectory fps | smooth walk fps |")
    print("|---|---|---|")
    for threads in args.threads:
        fps = measure(threads, args.frames)
        print(f"| {threads} | {fps['db']:.1f} | {fps['walk']:.1f} |")


if __name__ == "__main__":
    main()
