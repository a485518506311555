"""BDD100K night and dawn/dusk images for training, as VGA copies (``visloc data bdd``).

BDD100K's label files (``bdd100k_labels_images_train.json`` and the like, or a folder of per-image
JSON files) list frames as ``{"name": "<file>.jpg", "attributes": {"timeofday": "daytime" | "night" |
"dawn/dusk" | "undefined", ...}, ...}``. ``select_bdd`` keeps the frames whose ``timeofday`` is in
``times``, reads ``<images>/<name>`` and writes a copy whose longest side is ``size`` pixels (640: VGA
width; BDD's 1280x720 frames become 640x360) as JPEG to ``<out>/<name>``, plus ``<out>/images.txt``
(the written names, a list ``visloc train`` reads through ``data.lists``).

Resumable: an existing copy is not redone. A frame without a name, a missing or unreadable image is
skipped and reported in the ``JobSummary``, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visloc.data.errors import DatasetError
from visloc.errors import InputError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.images import ImageError, read_image, resize_image
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock

logger = logging.getLogger(__name__)

#: ``attributes.timeofday`` values kept by default
NIGHT_TIMES = ("night", "dawn/dusk")


def _frames(labels: Path) -> Iterator[Any]:
    """Frames of a BDD label file (a JSON list, or ``{"frames": [...]}``) or a folder of per-image JSON files."""
    if labels.is_dir():
        for p in sorted(labels.glob("*.json")):
            try:
                yield json.loads(p.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                yield {"name": None, "error": f"{p.name}: invalid JSON"}
        return
    if not labels.is_file():
        raise DatasetError(f"{labels}: BDD100K label file not found")
    try:
        data = json.loads(labels.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{labels}: not a JSON label file ({e.__class__.__name__})") from None
    if isinstance(data, dict):
        data = data.get("frames", data.get("labels"))
    if not isinstance(data, list):
        raise DatasetError(f"{labels}: expected a list of frames")
    yield from data


def select_frames(labels: str | Path, times: Sequence[str] = NIGHT_TIMES) -> tuple[list[str], list[tuple[str, str]]]:
    """Names of the frames whose ``attributes.timeofday`` is in ``times``, and the malformed entries skipped."""
    names, bad = [], []
    for i, frame in enumerate(_frames(Path(labels))):
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str) or not frame["name"]:
            err = frame.get("error") if isinstance(frame, dict) else None
            bad.append((f"entry {i}", err or "no image name"))
            continue
        attrs = frame.get("attributes")
        if isinstance(attrs, dict) and attrs.get("timeofday") in times:
            names.append(frame["name"])
    return names, bad


def _write_jpeg(path: Path, image: np.ndarray, quality: int = 95) -> None:
    bgr = cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def select_bdd(
    labels: str | Path, images: str | Path, out: str | Path, *, times: Sequence[str] = NIGHT_TIMES, size: int = 640
) -> JobSummary:
    """Copy the selected BDD100K frames at ``size`` px (longest side) to ``out``; see the module docstring.

    One job writes ``out`` at a time (``io.locks.output_lock``: a second one raises ``OutputLockedError``).

    Args:
        labels: a BDD100K label JSON file or a folder of per-image label files.
        images: the folder holding the frames (e.g. ``bdd100k/images/100k/train``).
        out: output folder.
        times: ``attributes.timeofday`` values to keep.
        size: longest side of the copies in pixels (only shrinks).

    Returns:
        counts of new and existing copies and every skipped frame with its reason.
    """
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise DatasetError(f"{images}: BDD100K image folder not found")
    if size < 16:
        raise InputError(f"size must be >= 16, got {size}")
    with output_lock(out):
        names, bad = select_frames(labels, times)
        summary = JobSummary(out, failed=list(bad))
        written = []
        for name in names:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                summary.failed.append((name, "name points outside the image folder"))
                continue
            dst = (out / name).with_suffix(".jpg")
            if dst.is_file():
                summary.already_done += 1
                written.append(dst.relative_to(out).as_posix())
                continue
            try:
                img = resize_image(read_image(images / name), resize_max=size).image
                _write_jpeg(dst, img)
            except (ImageError, OSError) as e:
                summary.failed.append((name, str(e).splitlines()[0]))
                continue
            summary.done += 1
            written.append(dst.relative_to(out).as_posix())
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "images.txt", "".join(f"{n}\n" for n in written))
        logger.info("bdd: %d selected, %d written, %d skipped", len(names), summary.done, len(summary.failed))
        return summary
