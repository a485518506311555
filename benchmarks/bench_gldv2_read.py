"""Reading GLDv2 training images: straight from the tars by offset (the prepared index) vs extracted files.

Usage: python benchmarks/bench_gldv2_read.py [--root DIR] [--work DIR] [--images 2000] [--tar-size 1000]
                                             [--rounds 3] [--quick] [--out outputs/bench_gldv2_read.json]

``root`` is a GLDv2 train folder with its images extracted (default: the built-in world's train landmarks,
``visloc data world landmarks --split train --out /work/data/world/lm-train``; ``--quick`` generates a small
one). The script packs the images into ``images_NNN.tar`` of ``tar_size`` images in ``work`` (as GLDv2 ships
them), prepares two indices (``locate=files`` on ``root``, ``locate=tars`` on ``work``), then reads the same
``images`` images in one seeded random order (as a shuffled training epoch does) through:

- ``files``: ``Gldv2Index.read_bytes`` on the extracted files (open, read, close per image);
- ``tars``: ``Gldv2Index.read_bytes`` by ``pread`` at the member's offset (descriptors kept open);
- ``tarfile``: ``Gldv2Train.read_bytes`` on the packed folder (``tarfile.open`` and a member lookup per read:
  what training without an index did).

Each is timed for the bytes alone and for bytes + JPEG decoding (``cv2.imdecode``), median of ``rounds``.
The page cache is warm (every file was just written or read); a cold disk adds its own seek and read time
to both layouts, which this machine cannot clear. Prints one JSON line per row and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from visloc.data.gldv2_index import Gldv2Index
from visloc.data.gldv2_prepare import Gldv2PrepareConf, prepare_gldv2
from visloc.data.gldv2_split import read_labels
from visloc.data.world import gldv2_layout as gl

WORLD_TRAIN = Path("/work/data/world/lm-train")


def _pack(root: Path, work: Path, tar_size: int) -> None:
    """``work``: ``root``'s CSVs and its images in tars of ``tar_size`` (md5 files too), no extracted tree."""
    work.mkdir(parents=True, exist_ok=True)
    for name in (gl.TRAIN_CSV, gl.TRAIN_CLEAN_CSV):
        if (root / name).is_file():
            (work / name).write_bytes((root / name).read_bytes())
    ids = sorted(read_labels(root))
    for k, start in enumerate(range(0, len(ids), tar_size)):
        tar = work / gl.tar_name(k)
        if not tar.is_file():
            gl.write_tar(tar, root, ids[start:start + tar_size])


def _time(read: Callable[[str], bytes], ids: list[str], decode: bool, rounds: int) -> float:
    """Median images per second over ``rounds`` passes."""
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in ids:
            data = read(i)
            if decode and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
                raise RuntimeError(f"image {i} does not decode")
        rates.append(len(ids) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    """Run the benchmark (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=WORLD_TRAIN)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--tar-size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_gldv2_read.json"))
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_gldv2_"))
    root = args.root
    if args.quick:
        from visloc.data.scene.city_conf import CityConf
        from visloc.data.world.landmarks import LandmarksConf, generate_landmarks

        city = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=96,
                        height=72, focal=75.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)
        root = generate_landmarks(LandmarksConf(city=city, views_per_landmark=2, min_views=1), work / "gen",
                                  split="train", progress=False).root
        args.images, args.tar_size, args.rounds = 50, 10, 1
    _pack(root, work / "packed", args.tar_size)
    prepare_gldv2(root, work / "idx-files", Gldv2PrepareConf(locate="files", val_fraction=0.0))
    prepare_gldv2(work / "packed", work / "idx-tars", Gldv2PrepareConf(locate="tars", val_fraction=0.0))
    files, tars = Gldv2Index.open(work / "idx-files"), Gldv2Index.open(work / "idx-tars")
    packed = gl.Gldv2Train.open(work / "packed", verify=False)
    ids = sorted(i.decode() for i in files.ids)
    ids = [ids[k] for k in np.random.default_rng(0).permutation(len(ids))[:args.images]]
    if any(files.read_bytes(i) != tars.read_bytes(i) for i in ids):
        raise RuntimeError("tar and file bytes differ")
    mean_kb = float(np.mean([files.sizes[files.row(i)] for i in ids])) / 1024
    rows = []
    for name, read in (("files", files.read_bytes), ("tars", tars.read_bytes), ("tarfile", packed.read_bytes)):
        row = {"reader": name, "images": len(ids), "mean_kb": round(mean_kb, 1),
               "bytes_per_s": round(_time(read, ids, False, args.rounds)),
               "decoded_per_s": round(_time(read, ids, True, args.rounds))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| reader | images/s (bytes) | images/s (bytes + decode) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['reader']} | {r['bytes_per_s']} | {r['decoded_per_s']} |")


if __name__ == "__main__":
    main()
