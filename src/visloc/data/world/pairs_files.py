"""Files of a ``pairs`` dataset (:mod:`visloc.data.world.pairs`): layout, the per-pair record, readers.

Layout of the dataset folder (image names are relative to it, the image root)::

    images/000000_0.png, images/000000_1.png ...   the two images of each pair, PNG RGB 8 bit
    depth/000000_0.h5 ...        HDF5, gzip: ``depth`` float32 [H, W] z-depth in metres (along the optical
                                 axis), 0 = sky (MegaDepth's layout, as glue-factory reads it); ``plane``
                                 int32 [H, W] the city's plane index (-1 sky: the labels that make sub-pixel
                                 depth exact, ``pairs_gt.View``); ``place`` int32 [H, W] place id (-1 sky)
    meta/000000.json             the pair's record (written last per pair: it marks the pair done)
    cameras.txt                  name PINHOLE W H fx fy cx cy   (visloc.io.poses, COLMAP: pixel centre at 0.5)
    poses.txt                    name qw qx qy qz tx ty tz      (cam_from_world, as COLMAP)
    pairs.txt                    name0 name1 per line           (visloc.io.pairs)
    pairs_info.csv               one row per pair, the columns of :data:`INFO_COLUMNS`
    world.yaml                   the job record (visloc.data.world.base), written last of all
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from visloc.data.scene.render import Frame
from visloc.data.world.pairs_gt import View
from visloc.errors import InputError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.poses import Camera, CameraPose, read_cameras, read_poses

#: the columns of ``pairs_info.csv``
INFO_COLUMNS = ("name0", "name1", "overlap", "overlap_0to1", "overlap_1to0", "angle_deg", "baseline_m",
                "overlap_level", "angle_level", "level", "bin", "condition0", "condition1")


def image_names(index: int) -> tuple[str, str]:
    """The two image names of pair ``index``."""
    return f"images/{index:06d}_0.png", f"images/{index:06d}_1.png"


def meta_name(index: int) -> str:
    """The record of pair ``index`` (relative to the dataset folder)."""
    return f"meta/{index:06d}.json"


def depth_name(image_name: str) -> str:
    """The depth file of an image: ``images/000000_0.png`` -> ``depth/000000_0.h5``."""
    return f"depth/{Path(image_name).stem}.h5"


def write_depth(path: Path, frame: Frame) -> Path:
    """Write a frame's depth (``inf`` = sky -> 0), plane index and place id to one HDF5 file, atomically."""
    import h5py

    d = np.asarray(frame.depth, np.float32)
    d = np.where(np.isfinite(d) & (d > 0), d, np.float32(0.0)).astype(np.float32)
    opts: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("depth", data=d, **opts)
        f.create_dataset("plane", data=np.asarray(frame.plane_index, np.int32), **opts)
        f.create_dataset("place", data=np.asarray(frame.place_id, np.int32), **opts)
    return path


def read_depth(path: str | Path, key: str = "depth") -> np.ndarray:
    """A dataset of a ``depth/*.h5`` file: ``depth`` float32 [H, W] metres, 0 = sky; ``plane`` / ``place`` int32."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: depth file not found")
    if key not in ("depth", "plane", "place"):
        raise ValueError(f"read_depth: key must be depth, plane or place, got {key!r}")
    with h5py.File(path, "r") as f:
        return np.asarray(f[key], dtype=np.float32 if key == "depth" else np.int32)


def read_pair(root: str | Path, name0: str, name1: str, *, cameras: dict[str, Camera] | None = None,
              poses: dict[str, CameraPose] | None = None) -> tuple[View, View]:
    """The two :class:`~visloc.data.world.pairs_gt.View` of a pair of the dataset at ``root`` (with labels).

    ``cameras`` / ``poses`` (as read by ``read_cameras`` / ``read_poses``) are read from ``root`` when not given.
    """
    root = Path(root)
    cameras = read_cameras(root / "cameras.txt") if cameras is None else cameras
    poses = read_poses(root / "poses.txt") if poses is None else poses
    views = []
    for name in (name0, name1):
        if name not in cameras or name not in poses:
            raise InputError(f"{root}: no camera or pose for image {name!r}")
        path = root / depth_name(name)
        views.append(View(read_depth(path), cameras[name].K_opencv, poses[name], read_depth(path, "plane")))
    return views[0], views[1]


@dataclass(frozen=True)
class PairInfo:
    """One row of ``pairs_info.csv``.

    Attributes:
        name0, name1: image names (relative to the dataset folder).
        overlap: symmetric overlap, ``min(overlap_0to1, overlap_1to0)``.
        overlap_0to1: share of the pixels of image 0 co-visible in image 1 (``pairs_gt.overlap_ratio``).
        overlap_1to0: the same from image 1.
        angle_deg: relative rotation angle of the two cameras (degrees).
        baseline_m: distance between the camera centres (metres).
        overlap_level, angle_level: difficulty levels of the overlap and of the angle (0 = easiest).
        level: ``max(overlap_level, angle_level)``, the pair's difficulty.
        bin: the name of ``level`` (``easy``, ``medium``, ``hard`` for three levels, else ``level<k>``).
        condition0, condition1: the condition names of the two images (``condition_name``).
    """

    name0: str
    name1: str
    overlap: float
    overlap_0to1: float
    overlap_1to0: float
    angle_deg: float
    baseline_m: float
    overlap_level: int
    angle_level: int
    level: int
    bin: str
    condition0: str
    condition1: str


def write_info(path: Path, rows: list[PairInfo]) -> Path:
    """Write ``pairs_info.csv`` (header :data:`INFO_COLUMNS`) atomically; floats with 8 significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INFO_COLUMNS)
    for r in rows:
        w.writerow([f"{v:.8g}" if isinstance(v, float) else v for v in (getattr(r, c) for c in INFO_COLUMNS)])
    return atomic_write_text(path, buf.getvalue())


def read_info(path: str | Path) -> list[PairInfo]:
    """Read ``pairs_info.csv`` into :class:`PairInfo` rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pairs info file not found")
    types = {f.name: f.type for f in fields(PairInfo)}
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != INFO_COLUMNS:
            raise InputError(f"{path}: expected the columns {','.join(INFO_COLUMNS)}")
        for i, row in enumerate(reader, 2):
            try:
                rows.append(PairInfo(**{k: _cast(v, types[k]) for k, v in row.items()}))
            except ValueError as e:
                raise InputError(f"{path}:{i}: {e}") from None
    return rows


def _cast(value: str, tp: Any) -> Any:
    return float(value) if tp in (float, "float") else int(value) if tp in (int, "int") else value


def info_to_json(info: PairInfo, extra: dict[str, Any]) -> str:
    """A pair's ``meta/*.json`` record: its :class:`PairInfo` fields plus ``extra`` (poses, places, tries)."""
    return json.dumps(asdict(info) | extra, indent=1, sort_keys=True) + "\n"


def info_from_json(text: str) -> tuple[PairInfo, dict[str, Any]]:
    """Inverse of :func:`info_to_json`: the :class:`PairInfo` and the other keys."""
    data = json.loads(text)
    names = {f.name for f in fields(PairInfo)}
    return PairInfo(**{k: data[k] for k in names}), {k: v for k, v in data.items() if k not in names}
