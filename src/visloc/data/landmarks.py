"""A small landmark-retrieval benchmark made offline from real photos, in the revisitop layout.

Each *landmark* is one real photo: ``skimage.data`` images (always there) and, when the Debian
package ``opencv-doc`` is installed, photos of its ``examples/data`` (missing files are skipped).
Every photo is scaled to cover ``size`` and centre-cropped to it. A seeded permutation makes the
first half of the landmarks *query landmarks* and the rest *distractor landmarks*.

Views (JPEG, quality 95), each drawn with its own seeded generator:

- **query** (query landmarks only): a mild homography (rotation <= 10 deg, scale 0.9-1.1) and
  ``photometric()`` (gain, gamma, blur, noise).
- **database views** (every landmark, ``views_per_landmark`` of them), cycling through
  ``VIEW_KINDS``; every view also gets ``photometric()``:

  - ``homography``: easy: ``random_homography`` (<= 20 deg, scale 0.8-1.2, perspective 0.05);
    hard: up to 90 deg, scale 0.5-0.7 or 1.5-1.9, perspective 0.15.
  - ``crop``: a sub-window (easy: 60-80 % of the width, hard: 30-45 %) rescaled to ``size``.
  - ``occlusion``: a rectangle (easy: 15-25 % of the area, hard: 40-55 %) filled with the same
    window of another photo: a distractor landmark's (a query landmark's only when no other
    landmark is a distractor).
  - ``photometric``: the photometric change alone (easy).

The ground truth of a query lists the database views of its landmark as ``easy`` or ``hard`` by
the level of their change; ``junk`` lists the occlusion views whose occluder is a patch of the
query's own photo (only when no other landmark is a distractor): they show part of it. Views of
the other landmarks, distractors included, are negatives. Written files::

    out_dir/db/<landmark>_<k>.jpg       database views (``imlist``, sorted, names relative to db/)
    out_dir/queries/<landmark>_q.jpg    one query per query landmark (``qimlist``)
    out_dir/gnd.json                    {"imlist", "qimlist", "gnd": [{"easy", "hard", "junk"}]}
    out_dir/views.json                  per image: landmark, kind, level, occluder (for inspection)

``visloc.data.oxford_paris.load_gnd`` reads ``gnd.json``. Writes are atomic; images of an earlier
build that the new one does not list are removed from ``db/`` and ``queries/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from visloc.data.errors import DatasetError
from visloc.data.homography import OPENCV_DATA, fit_image, photometric, random_homography
from visloc.io.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
                  "hubble_deep_field", "retina", "brick", "grass", "gravel", "coins")
OPENCV_PHOTOS = ("graf1.png", "leuvenA.jpg", "box_in_scene.png", "building.jpg", "home.jpg", "fruits.jpg",
                 "baboon.jpg", "messi5.jpg", "aero1.jpg", "butterfly.jpg", "board.jpg", "starry_night.jpg")
#: ``skimage:<name>`` or ``opencv:<file>`` (the latter skipped when not installed)
DEFAULT_SOURCES = tuple(f"skimage:{n}" for n in SKIMAGE_PHOTOS) + tuple(f"opencv:{n}" for n in OPENCV_PHOTOS)
#: (kind, level) of database view ``k`` is ``VIEW_KINDS[k % len(VIEW_KINDS)]``
VIEW_KINDS = (("homography", "easy"), ("crop", "hard"), ("occlusion", "easy"), ("homography", "hard"),
              ("photometric", "easy"), ("crop", "easy"), ("occlusion", "hard"))
JPEG_QUALITY = 95


def landmark_name(source: str) -> str:
    """``skimage:astronaut`` -> ``astronaut``; ``opencv:graf1.png`` -> ``graf1``."""
    return Path(source.partition(":")[2]).stem


def available_sources(sources: Sequence[str] = DEFAULT_SOURCES, opencv_root: Path = OPENCV_DATA) -> list[str]:
    """``sources`` without the OpenCV photos that are not installed; bad specs raise ``ValueError``."""
    out = []
    for spec in sources:
        kind, _, name = spec.partition(":")
        if kind not in ("skimage", "opencv") or not name:
            raise ValueError(f"sources: {spec!r} is not 'skimage:<name>' or 'opencv:<file>'")
        if kind == "opencv" and not (Path(opencv_root) / name).is_file():
            logger.info("landmarks: %s not installed, skipped", Path(opencv_root) / name)
            continue
        out.append(spec)
    names = [landmark_name(s) for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sources: landmark names must be unique, got {names}")
    return out


def load_source(spec: str, size: tuple[int, int], opencv_root: Path = OPENCV_DATA) -> np.ndarray:
    """RGB float32 ``[H, W, 3]`` in ``[0, 1]`` of one source photo, covering and cropped to ``size``."""
    kind, _, name = spec.partition(":")
    if kind == "skimage":
        import skimage.data

        if not hasattr(skimage.data, name):
            raise DatasetError(f"skimage.data has no image {name!r}")
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, 2)
        img = img[..., :3].astype(np.float32) / 255.0
    else:
        bgr = cv2.imread(str(Path(opencv_root) / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{Path(opencv_root) / name}: not a readable image")
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return fit_image(img, size)


def _warp(rng: np.random.Generator, image: np.ndarray, hard: bool) -> np.ndarray:
    size = (image.shape[1], image.shape[0])
    if hard:
        scale = (0.5, 0.7) if rng.random() < 0.5 else (1.5, 1.9)
        H = random_homography(rng, size, max_angle=90.0, scale_range=scale, perspective=0.15)
    else:
        H = random_homography(rng, size, max_angle=20.0, scale_range=(0.8, 1.2), perspective=0.05)
    return cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _crop(rng: np.random.Generator, image: np.ndarray, hard: bool) -> np.ndarray:
    h, w = image.shape[:2]
    f = rng.uniform(0.3, 0.45) if hard else rng.uniform(0.6, 0.8)
    cw, ch = max(2, round(w * f)), max(2, round(h * f))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def _occlude(rng: np.random.Generator, image: np.ndarray, other: np.ndarray, hard: bool) -> np.ndarray:
    h, w = image.shape[:2]
    area = rng.uniform(0.4, 0.55) if hard else rng.uniform(0.15, 0.25)
    aspect = rng.uniform(0.6, 1.6)
    rw = min(w, max(1, round(np.sqrt(area * w * h * aspect))))
    rh = min(h, max(1, round(area * w * h / rw)))
    x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    out = image.copy()
    out[y0:y0 + rh, x0:x0 + rw] = other[y0:y0 + rh, x0:x0 + rw]
    return out


def make_view(rng: np.random.Generator, image: np.ndarray, kind: str, level: str,
              other: np.ndarray | None = None) -> np.ndarray:
    """One database view of ``image`` (see the module docstring); ``other`` fills occlusions."""
    hard = level == "hard"
    if kind == "homography":
        view = _warp(rng, image, hard)
    elif kind == "crop":
        view = _crop(rng, image, hard)
    elif kind == "occlusion":
        if other is None:
            raise ValueError("make_view: an occlusion needs another photo")
        view = _occlude(rng, image, other, hard)
    elif kind == "photometric":
        view = image
    else:
        raise ValueError(f"make_view: unknown kind {kind!r}")
    return photometric(rng, view)


def _query_view(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = (image.shape[1], image.shape[0])
    H = random_homography(rng, size, max_angle=10.0, scale_range=(0.9, 1.1), perspective=0.03)
    return photometric(rng, cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR))


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    bgr = cv2.cvtColor((np.clip(image, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _remove_stale(folder: Path, keep: set[str]) -> None:
    for f in folder.glob("*.jpg"):
        if f.name not in keep:
            f.unlink()


def build_landmarks(out_dir: str | Path, seed: int = 0, views_per_landmark: int = 5,
                    size: tuple[int, int] = (640, 480), sources: Sequence[str] = DEFAULT_SOURCES,
                    num_queries: int | None = None) -> Path:
    """Write the landmark-retrieval dataset (module docstring) to ``out_dir``; return ``gnd.json``.

    Args:
        out_dir: output folder (created); ``db/``, ``queries/``, ``gnd.json``, ``views.json``.
        seed: makes the whole dataset reproducible.
        views_per_landmark: database views per landmark (>= 1); with >= 2 every query has an easy
            and a hard positive.
        size: image size ``(W, H)``.
        sources: ``skimage:<name>`` / ``opencv:<file>`` photos, one landmark each (>= 2 usable).
        num_queries: query landmarks; None: half of them (rounded up), the rest are distractors.
    """
    out_dir = Path(out_dir)
    if views_per_landmark < 1:
        raise ValueError(f"views_per_landmark must be >= 1, got {views_per_landmark}")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (W, H) with both >= 16, got {size}")
    specs = available_sources(sources)
    if len(specs) < 2:
        raise DatasetError(f"landmarks: need at least 2 usable photos, got {len(specs)}")
    nq = -(-len(specs) // 2) if num_queries is None else num_queries
    if not 1 <= nq <= len(specs):
        raise ValueError(f"num_queries must be in [1, {len(specs)}], got {num_queries}")
    size = (int(size[0]), int(size[1]))
    photos = [load_source(s, size) for s in specs]
    names = [landmark_name(s) for s in specs]
    is_query = np.zeros(len(specs), bool)
    is_query[np.random.default_rng(seed).permutation(len(specs))[:nq]] = True

    views: dict[str, dict[str, str]] = {}
    for i, (name, photo) in enumerate(zip(names, photos, strict=True)):
        rng = np.random.default_rng([seed, i])
        if is_query[i]:
            _write_jpeg(out_dir / "queries" / f"{name}_q.jpg", _query_view(rng, photo))
            views[f"queries/{name}_q.jpg"] = {"landmark": name, "kind": "query", "level": "", "occluder": ""}
        others = [j for j in range(len(specs)) if j != i]
        fillers = [j for j in others if not is_query[j]] or others
        for k in range(views_per_landmark):
            kind, level = VIEW_KINDS[k % len(VIEW_KINDS)]
            other = fillers[int(rng.integers(0, len(fillers)))]
            _write_jpeg(out_dir / "db" / f"{name}_{k}.jpg", make_view(rng, photo, kind, level, photos[other]))
            views[f"db/{name}_{k}.jpg"] = {"landmark": name, "kind": kind, "level": level,
                                           "occluder": names[other] if kind == "occlusion" else ""}

    imlist = sorted(k.removeprefix("db/") for k in views if k.startswith("db/"))
    qimlist = sorted(k.removeprefix("queries/") for k in views if k.startswith("queries/"))
    gnd = []
    for q in qimlist:
        landmark = views[f"queries/{q}"]["landmark"]
        same = [(j, views[f"db/{n}"]["level"]) for j, n in enumerate(imlist)
                if views[f"db/{n}"]["landmark"] == landmark]
        junk = [j for j, n in enumerate(imlist) if views[f"db/{n}"]["occluder"] == landmark]
        gnd.append({"easy": [j for j, lv in same if lv == "easy"], "hard": [j for j, lv in same if lv == "hard"],
                    "junk": junk})
    _remove_stale(out_dir / "db", set(imlist))
    _remove_stale(out_dir / "queries", set(qimlist))
    atomic_write_text(out_dir / "views.json", json.dumps(views, indent=1) + "\n")
    record = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd,
              "conf": {"seed": seed, "views_per_landmark": views_per_landmark, "size": list(size),
                       "sources": specs, "num_queries": nq}}
    gnd_path = atomic_write_text(out_dir / "gnd.json", json.dumps(record) + "\n")
    logger.info("landmarks: %d database views, %d queries -> %s", len(imlist), len(qimlist), out_dir)
    return gnd_path
