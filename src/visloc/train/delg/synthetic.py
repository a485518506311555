"""Synthetic landmarks for tiny runs: a GLDv2 train folder and a Revisited-style set, written in seconds.

A class is a hue: image ``k`` of class ``c`` of ``K`` is a sinusoidal grating between a foreground colour
of hue ``c / K`` (jittered; random saturation and value) and a random background colour, at a random
orientation, spatial frequency and phase, plus noise. Background, texture and brightness are nuisances
shared by every class, so an untrained network's features retrieve only moderately (nearest-neighbour
accuracy about 0.55 on 4 classes) and a few dozen SGD steps learn the cue (about 0.95). Deterministic per
seed.

``write_gldv2`` writes ``train.csv``, ``train_clean.csv`` and ``<a>/<b>/<c>/<id>.jpg``
(``data.world.gldv2_layout``); ``write_revisited`` writes ``jpg/<name>.jpg`` and ``gnd_synthetic.pkl``
(``data.world.revisited.write_gnd``) with every database image of the query's class ``easy`` and the
query box the central 80 % of the query image. The CSVs and the pickle are written last, so a folder that
has them is complete and is kept.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from visloc.data.world import gldv2_layout as gl
from visloc.data.world.revisited import gnd_name, image_path, write_gnd
from visloc.io.atomic import atomic_path

NAME = "synthetic"


def landmark_image(rng: np.random.Generator, cls: int, num_classes: int, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB of class ``cls`` (module docstring)."""
    theta, cycles = rng.uniform(0, np.pi), rng.uniform(2.0, 5.0)  # orientation, periods across the image
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    along = xx * np.cos(theta) + yy * np.sin(theta)
    wave = (0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi)))[..., None]
    hue = (cls / num_classes + rng.normal(0.0, 0.02)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
    bg = rng.uniform(0.0, 1.0, 3)
    img = wave * fg + (1 - wave) * bg + rng.normal(0.0, 0.05, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_gldv2(root: str | Path, classes: int, images_per_class: int, size: int, seed: int = 0) -> Path:
    """A GLDv2 train folder of synthetic landmarks (landmark ids ``10 c``); returns ``root``."""
    root = Path(root)
    if (root / gl.TRAIN_CLEAN_CSV).is_file() and (root / gl.TRAIN_CSV).is_file():
        return root
    rows, clean = [], {}
    for c in range(classes):
        ids = []
        for k in range(images_per_class):
            image_id = gl.make_image_id(NAME, "train", seed, c, k)
            _write_jpeg(root / gl.image_relpath(image_id), landmark_image(np.random.default_rng((seed, 0, c, k)),
                                                                          c, classes, size))
            rows.append(gl.Gldv2Row(image_id, f"visloc-synthetic://{image_id}", 10 * c))
            ids.append(image_id)
        clean[10 * c] = ids
    gl.write_train_csv(root / gl.TRAIN_CSV, rows)
    gl.write_train_clean_csv(root / gl.TRAIN_CLEAN_CSV, clean)
    return root


def write_revisited(root: str | Path, classes: int, queries_per_class: int, database_per_class: int, size: int,
                    seed: int = 0) -> Path:
    """A Revisited-style set of the same classes (other draws than ``write_gldv2``); returns the gnd path."""
    root = Path(root)
    path = root / gnd_name(NAME)
    if path.is_file():
        return path
    imlist, qimlist, db_class, q_class = [], [], [], []
    for c in range(classes):
        for k in range(database_per_class):
            name = f"db_{c:03d}_{k}"
            _write_jpeg(image_path(root, name), landmark_image(np.random.default_rng((seed, 1, c, k)), c, classes,
                                                               size))
            imlist.append(name)
            db_class.append(c)
        for k in range(queries_per_class):
            name = f"q_{c:03d}_{k}"
            _write_jpeg(image_path(root, name), landmark_image(np.random.default_rng((seed, 2, c, k)), c, classes,
                                                               size))
            qimlist.append(name)
            q_class.append(c)
    m = 0.1 * size
    gnd = [{"bbx": [m, m, size - m, size - m], "easy": [j for j, d in enumerate(db_class) if d == c], "hard": [],
            "junk": []} for c in q_class]
    return write_gnd(path, imlist, qimlist, gnd)
