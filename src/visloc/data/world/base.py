"""What every world generator shares: the job record, resumable item writes, progress, seeds, budgets.

A generator (``landmarks``, ``pairs``, ``drive``, ``distill``) writes one dataset folder ``out`` from a conf
and a split. It is a pure function of (kind, split, conf, ``WORLD_VERSION``), and it is resumable:

1. :func:`start` writes ``.world-job.yaml`` (the job record) into ``out``, or, when the folder already holds a
   record, checks that it is the same job: a finished job (``world.yaml`` present and equal) returns at once,
   an interrupted one is continued, and a different one is refused with one line naming the first field that
   differs (``out`` is never mixed from two confs).
2. Items are written through :class:`ItemWriter`: each file atomically (a kill never leaves half a file
   under its final name), and an item whose file exists is skipped on the re-run.
3. :func:`finish` writes ``world.yaml`` last (the record plus counts): its presence marks a complete dataset.

Random draws come from :func:`job_rng` (``seed``, the kind, the split and any item index), so an item is the
same whether it was written in the first run or after a resume.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import cv2
import numpy as np
import yaml

from visloc.conf import ConfError, conf_to_dict
from visloc.data.scene.places import SPLITS, Split
from visloc.errors import InputError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.jobs import JobSummary

#: bump on any change of what a generator writes for the same conf (a stored dataset is then not resumed)
WORLD_VERSION = 3  # 3: drive profiles no longer crawl through a curve that starts at a rest
#: the completion record, written last
RECORD = "world.yaml"
#: the record of a job in progress (removed by :func:`finish`)
PENDING = ".world-job.yaml"

T = TypeVar("T")


def check_split(split: str) -> Split:
    """``split`` if it is one of ``SPLITS``, else a ``ConfError`` naming the known ones."""
    if split not in get_args(Split):
        raise ConfError(f"split: must be one of {list(SPLITS)}, got {split!r}")
    return cast(Split, split)


def check_frame_budget(count: int, limit: int, field_name: str) -> None:
    """Fail at once, naming ``field_name``, when a job would write more than ``limit`` frames.

    Args:
        count: frames the conf asks for (e.g. rate x duration x traversals).
        limit: the conf's stated maximum.
        field_name: the conf field that sets the request (e.g. ``DriveConf.rate_hz``).
    """
    if count > limit:
        raise ConfError(f"{field_name}: would write {count} frames, more than max_frames = {limit}")


def job_rng(seed: int, kind: str, split: str, *index: int) -> np.random.Generator:
    """The generator of one job (or one item of it): stable across runs, resumes and Python versions."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), zlib.crc32(split.encode()), *index])


@dataclass(frozen=True)
class WorldJob:
    """One generator run: what it makes, from which conf, for which split, where.

    Attributes:
        kind: generator name (``landmarks``, ``pairs``, ``drive``, ``distill``).
        split: the city split whose places the dataset shows.
        seed: the world seed (the city's ``CityConf.seed``).
        conf: the generator's frozen conf (its ``city`` field holds the seed).
        out: the dataset folder.
    """

    kind: str
    split: Split
    seed: int
    conf: Any
    out: Path

    def record(self) -> dict[str, Any]:
        """The job's identity, as written to ``.world-job.yaml`` and ``world.yaml``.

        ``photos`` names the texture photo library (count and sha256 of the names): with ``extra_photos`` it
        depends on whether opencv-doc is installed, so a dataset is never resumed with another library.
        """
        return {"generator": "visloc.data.world", "kind": self.kind, "version": WORLD_VERSION,
                "split": self.split, "seed": self.seed, "conf": conf_to_dict(self.conf), "photos": _photos(self.conf)}


def _photos(conf: Any) -> str:
    """``"<count> <sha256 of the names>"`` of the photos the conf's city draws textures from."""
    from visloc.data.scene.texture_cache import photo_names

    city = getattr(conf, "city", None)
    names = photo_names(bool(getattr(city, "extra_photos", False)))
    return f"{len(names)} {hashlib.sha256(' '.join(names).encode()).hexdigest()[:16]}"


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Dotted path of the first place where two plain (YAML) values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if diff is not None:
                return diff
        return None
    return None if a == b else (where or "record")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: unreadable job record ({e.__class__.__name__}); delete it to start over") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a job record; delete it to start over")
    return data


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("generator", "kind", "version", "split", "seed", "conf", "photos")}


def _check_same(job: WorldJob, path: Path, stored: dict[str, Any]) -> None:
    diff = _first_difference(_identity(stored), job.record())
    if diff is not None:
        raise InputError(f"{job.out}: holds another world job ({diff} differs, see {path.name}); use another --out "
                         "or delete the folder")


def start(job: WorldJob) -> bool:
    """Begin or continue ``job`` in ``job.out``; True when it is already complete (nothing to do).

    Raises:
        InputError: ``out`` holds a record of a different job (the message names the first differing field).
    """
    done = _read_record(job.out / RECORD)
    if done is not None:
        _check_same(job, job.out / RECORD, done)
        return True
    pending = _read_record(job.out / PENDING)
    if pending is not None:
        _check_same(job, job.out / PENDING, pending)
        return False
    atomic_write_text(job.out / PENDING, yaml.safe_dump(job.record(), sort_keys=False))
    return False


def finish(job: WorldJob, summary: JobSummary, extra: dict[str, Any] | None = None) -> Path:
    """Write ``world.yaml`` (record, counts, ``extra``) last and drop the pending record; returns its path."""
    record = job.record() | {"items": summary.done + summary.already_done,
                             "skipped": [f"{n}: {r}" for n, r in summary.failed]} | dict(extra or {})
    path = atomic_write_text(job.out / RECORD, yaml.safe_dump(record, sort_keys=False))
    (job.out / PENDING).unlink(missing_ok=True)
    return path


def encode_image(name: str, image: np.ndarray, jpeg_quality: int = 95) -> bytes:
    """RGB ``[H, W, 3]`` (uint8, or float in [0, 1]) encoded by the suffix of ``name`` (.png or .jpg)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: image must be RGB [H, W, 3], got {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    suffix = Path(name).suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix in (".jpg", ".jpeg") else []
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{name}: images are written as .png or .jpg")
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image[..., ::-1]), params)
    if not ok:
        raise ValueError(f"{name}: image encoding failed")
    return buf.tobytes()


@dataclass
class ItemWriter:
    """Atomic, resumable writes of a dataset's files under ``root`` (names are relative, ``/``-separated).

    An item counts as done when its file exists (files appear only complete, by rename), so a generator
    asks :meth:`has` before it renders an item and skips it on a re-run. ``summary`` counts items written
    now, found done, and skipped with a reason (:meth:`skip`).
    """

    root: Path
    summary: JobSummary = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.summary = JobSummary(self.root)

    def path(self, name: str) -> Path:
        """The file of ``name``; a name that leaves ``root`` (absolute, ``..``) is refused."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"ItemWriter: item name {name!r} must be relative and stay inside {self.root}")
        return self.root / rel

    def has(self, name: str) -> bool:
        """True when ``name`` is already written (then it is counted as already done)."""
        if self.path(name).is_file():
            self.summary.already_done += 1
            return True
        return False

    def write_bytes(self, name: str, data: bytes, *, count: bool = True) -> Path:
        """Write ``data`` to ``name`` atomically; ``count`` adds one to the items written."""
        path = self.path(name)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        if count:
            self.summary.done += 1
        return path

    def write_image(self, name: str, image: np.ndarray, *, count: bool = True, jpeg_quality: int = 95) -> Path:
        """Write an RGB image (.png or .jpg by the name's suffix) atomically."""
        return self.write_bytes(name, encode_image(name, image, jpeg_quality), count=count)

    def write_npy(self, name: str, array: np.ndarray, *, count: bool = False) -> Path:
        """Write ``array`` as ``.npy`` (no pickle) atomically; by default not counted as an item."""
        path = self.path(name)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
        if count:
            self.summary.done += 1
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file atomically (an index, a CSV); not counted as an item."""
        return atomic_write_text(self.path(name), text)

    def skip(self, name: str, reason: str) -> None:
        """Record an item given up, with its one-line reason (reported at the end, the job goes on)."""
        self.summary.failed.append((name, reason))


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """``items`` with a tqdm progress bar on stderr when ``enabled``."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, disable=not enabled, unit="item", dynamic_ncols=True)
