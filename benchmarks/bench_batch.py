"""Images per second of ``extract_features`` with batch sizes 1, 4 and 8, side by side in one run.

Usage: python benchmarks/bench_batch.py [--threads 2] [--images 8] [--size 640 480] [--batch 1 4 8]
                                        [--extractors aliked-n16 xfeat ...] [--quick]
Writes ``--images`` real photos (``skimage.data``, resized to ``--size``) to a temporary folder, then for each
extractor times the whole pipeline (read, resize, network, staging, commit; no loader workers) once per batch
size into a fresh file, after one warm-up image. The load average before and after is printed with the table.
``--quick``: 4 images at 320x240, XFeat only, B = 1 and 2 (the code path; the numbers mean little).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from visloc.pipelines.bench import machine_line
from visloc.pipelines.extract import extract_features

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "cat",
          "colorwheel")


def write_photos(root: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` photos of ``skimage.data`` at ``size (W, H)`` as PNG in ``root``; returns their names."""
    from skimage import data

    names = []
    for i in range(count):
        rgb = getattr(data, PHOTOS[i % len(PHOTOS)])()
        rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        name = f"{i:03d}_{PHOTOS[i % len(PHOTOS)]}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(cv2.resize(rgb, size), cv2.COLOR_RGB2BGR))
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--batch", type=int, nargs="+", default=(1, 4, 8))
    parser.add_argument("--extractors", nargs="+", default=("aliked-n16", "xfeat", "hfnet", "disk"))
    parser.add_argument("--quick", action="store_true", help="4 images at 320x240, xfeat, B = 1 and 2")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.batch, args.extractors = 4, (320, 240), (1, 2), ("xfeat",)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        names = write_photos(root, args.images, tuple(args.size))
        for ex in args.extractors:
            extract_features(root, Path(tmp) / f"warm_{ex}.h5", extractor=ex, image_list=names[:1], progress=False)
            speeds = []
            for b in args.batch:
                start = time.perf_counter()
                extract_features(root, Path(tmp) / f"{ex}_b{b}.h5", extractor=ex, image_list=names, batch_size=b,
                                 num_workers=0, progress=False)
                speeds.append(len(names) / (time.perf_counter() - start))
            rows.append((ex, speeds))
    print(f"# {machine_line(args.threads)}; {args.images} images at {args.size[0]}x{args.size[1]}; "
          f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| extractor | " + " | ".join(f"B={b} img/s" for b in args.batch) + " |")
    print("|---|" + "---:|" * len(args.batch))
    for ex, speeds in rows:
        print(f"| {ex} | " + " | ".join(f"{s:.2f}" for s in speeds) + " |")


if __name__ == "__main__":
    main()
