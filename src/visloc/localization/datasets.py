"""Localization splits of real ground truth, written in the files ``visloc map build`` / ``localize`` read.

Castle-simu (ViSP, Debian ``visp-images-data``; ``visloc.data.castle``): 40 rendered 640x480 frames of a
castle model seen from about 0.5 m, consecutive frames 1-20 mm apart. A split maps every
``step``-th frame and localizes the others. Visuallocalization.net's Aachen thresholds (0.25 m / 2 deg,
0.5 m / 5 deg, 5 m / 10 deg) are for cameras tens of metres from the scene; here the scene is about 100x
closer, so the position thresholds are divided by 100 (``CASTLE_THRESHOLDS``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from visloc.data.castle import CASTLE_ROOT, load_castle
from visloc.io.images import read_image
from visloc.io.poses import Camera, CameraPose, write_cameras, write_poses

#: (position metres, rotation degrees) pairs, Aachen's scaled to Castle-simu's 0.5 m viewing distance
CASTLE_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.0025, 2.0), (0.005, 5.0), (0.05, 10.0))


@dataclass(frozen=True)
class LocalizationSplit:
    """Folders and files of a split; ``ground_truth`` (also in ``query_poses``): each query's ``cam_from_world``."""

    db_images: Path
    db_poses: Path
    db_cameras: Path
    query_images: Path
    query_cameras: Path
    query_poses: Path
    ground_truth: dict[str, CameraPose]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(src, dst)
    except OSError:  # file systems without symbolic links
        shutil.copyfile(src, dst)


def castle_split(out: str | Path, step: int = 2, root: str | Path = CASTLE_ROOT,
                 max_queries: int | None = None) -> LocalizationSplit:
    """Write a Castle-simu split below ``out``: ``db/`` + poses and cameras, ``query/`` + cameras and true poses.

    Args:
        out: folder to write (images are symbolic links to the package's files).
        step: frames ``0, step, 2 * step...`` (in index order) are the database, the others queries.
        root: the Castle-simu folder.
        max_queries: keep at most this many queries, evenly spaced (None: all).

    Raises:
        DatasetError: when Castle-simu is not installed.
    """
    if step < 2:
        raise ValueError(f"step must be >= 2 (some frames must be queries), got {step}")
    out = Path(out)
    frames = load_castle(root)
    db = [f for i, f in enumerate(frames) if i % step == 0]
    queries = [f for i, f in enumerate(frames) if i % step]
    if max_queries is not None and len(queries) > max_queries:
        queries = [queries[round(i * (len(queries) - 1) / max(max_queries - 1, 1))] for i in range(max_queries)]
    names = {}
    for folder, subset in (("db", db), ("query", queries)):
        for f in subset:
            name = Path(f.name).name
            _link(f.image_path, out / folder / name)
            names[f.name] = name
    height, width = read_image(frames[0].image_path, grayscale=True).shape[:2]
    camera = Camera.from_opencv(frames[0].K, width, height)
    write_poses(out / "db_poses.txt", {names[f.name]: CameraPose(f.R, f.t) for f in db})
    write_cameras(out / "db_cameras.txt", {names[f.name]: camera for f in db})
    write_cameras(out / "query_cameras.txt", {names[f.name]: camera for f in queries})
    truth = {names[f.name]: CameraPose(f.R, f.t) for f in queries}
    write_poses(out / "query_poses.txt", truth)  # ground truth, for 'visloc eval localization'
    return LocalizationSplit(out / "db", out / "db_poses.txt", out / "db_cameras.txt", out / "query",
                             out / "query_cameras.txt", out / "query_poses.txt", truth)
