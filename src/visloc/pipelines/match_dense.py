"""Match image pairs with an image matcher into a feature file and a match file (hloc layout), resumably.

An image matcher (``MATCHERS`` kind ``image``) gives new keypoints for every pair. Maps,
localization and evaluation need one keypoint set per image, so the keypoints of each image are
merged over all its pairs, as hloc's dense matching does:

1. **Match** each pair not yet done; its matched keypoints (original pixels), scores and image sizes
   are staged per pair (``io.parts``) and committed to ``<matches>.raw.h5``; a killed run resumes.
2. **Merge** (every run, over all pairs of the pairs file): each image's matched points are binned
   into square cells of ``cell_size`` pixels (cell ``floor((p + 0.5) / cell_size)`` per axis, the
   pixel-centre convention); one keypoint per occupied cell, at the score-weighted mean of its
   points (so sub-pixel positions survive), scored by their best score.
3. **Write** ``features`` (``keypoints``, ``scores``, ``image_size``; no descriptors) and ``matches``
   (``matches0``: per pair the cell of image 0 -> the cell of image 1, one-to-one: the best-scored
   match of a cell wins), each atomically, recording the matcher's resolved conf.

The merge is deterministic given the raw file, so adding pairs later re-merges everything; keypoint
ids are only valid with their own feature file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.io import features_h5, matches_h5, parts
from visloc.io.images import ImageError, read_image
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.io.outputs import check_h5_output
from visloc.io.pairs import read_pairs
from visloc.matching import MATCHERS
from visloc.pipelines.common import conf_record, conflicting_conf, pick_device

logger = logging.getLogger(__name__)
ATTR = "visloc_dense_matcher"


@dataclass(frozen=True)
class QuantizeConf:
    """How per-pair keypoints merge into one keypoint set per image.

    Attributes:
        cell_size: side of the square cells, pixels; points of one image in one cell become one keypoint.
    """

    cell_size: float = 2.0

    def __post_init__(self) -> None:
        if not self.cell_size > 0:
            raise InputError(f"QuantizeConf.cell_size: expected > 0 pixels, got {self.cell_size}")


def raw_path(matches: Path) -> Path:
    """The per-pair cache of ``matches``."""
    return matches.with_name(matches.stem + ".raw.h5")


def _match_pairs(todo: list[tuple[str, str]], images: Path, raw: Path, matcher: Any, device: Any,
                 summary: JobSummary, progress: bool) -> None:
    """Run the image matcher on each pair and stage its matched keypoints in ``raw``."""
    from visloc.matching.api import match_images

    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[name] = read_image(images / name)
        return cache[name]

    for name0, name1 in tqdm(todo, desc=f"match-dense {type(matcher).__name__}", disable=not progress,
                             unit="pair"):
        try:
            img0, img1 = load(name0), load(name1)
        except ImageError as e:
            summary.failed.append((f"{name0} {name1}", str(e)))
            continue
        pred = match_images(matcher, img0, img1, device=device)
        m, scores = pred.numpy()
        if pred.keypoints0 is None or pred.keypoints1 is None:
            raise RuntimeError(f"{type(matcher).__name__}: an image matcher must return keypoints")
        parts.write_part(raw, matches_h5.names_to_pair(name0, name1), {
            "keypoints0": pred.keypoints0.numpy()[m[:, 0]].astype(np.float32),
            "keypoints1": pred.keypoints1.numpy()[m[:, 1]].astype(np.float32), "scores": scores,
            "size0": np.array([img0.shape[1], img0.shape[0]], np.int64),
            "size1": np.array([img1.shape[1], img1.shape[0]], np.int64)})
        summary.done += 1


def _read_raw(raw: Path, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    out = {}
    if not raw.exists():
        return out
    with h5py.File(raw, "r") as fd:
        for pair in pairs:
            key = matches_h5.names_to_pair(*pair)
            if key in fd:
                grp = fd[key]
                if not isinstance(grp, h5py.Group):
                    raise InputError(f"{raw}: {key!r} is not a group of raw matches")
                out[pair] = {k: v[()] for k, v in grp.items()}
    return out


def merge_keypoints(points: np.ndarray, scores: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Merge ``points [P, 2]`` (with ``scores [P]``) into one keypoint per occupied cell.

    Returns:
        ``keypoints [N, 2]`` (score-weighted means, float32), ``keypoint_scores [N]`` (the best score),
        and ``assign [P]``: the keypoint index of each point. Cells are ordered by (row, column).
    """
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    cells = np.floor((points.astype(np.float64) + 0.5) / cell_size).astype(np.int64)
    _, first, assign = np.unique(cells[:, ::-1], axis=0, return_index=True, return_inverse=True)
    assign = assign.reshape(-1)
    n = len(first)
    w = np.maximum(scores.astype(np.float64), 1e-6)
    sums = np.zeros((n, 2))
    np.add.at(sums, assign, points * w[:, None])
    weights = np.zeros(n)
    np.add.at(weights, assign, w)
    best = np.full(n, -np.inf)
    np.maximum.at(best, assign, scores.astype(np.float64))
    return (sums / weights[:, None]).astype(np.float32), best.astype(np.float32), assign


def _one_to_one(idx0: np.ndarray, idx1: np.ndarray, scores: np.ndarray, n0: int) -> tuple[np.ndarray, np.ndarray]:
    """``matches0 [n0]`` and ``scores0 [n0]`` keeping, best score first, each cell of either image once."""
    m0, s0 = np.full(n0, -1, np.int64), np.zeros(n0, np.float32)
    used1: set[int] = set()
    for k in np.argsort(-scores, kind="stable"):
        a, b = int(idx0[k]), int(idx1[k])
        if m0[a] < 0 and b not in used1:
            m0[a], s0[a] = b, scores[k]
            used1.add(b)
    return m0, s0


def merge_pairs(raw: dict[tuple[str, str], dict[str, np.ndarray]], cell_size: float
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
    """Per-pair matched keypoints -> per-image features and per-pair ``(matches0, scores0)``."""
    points: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, np.ndarray] = {}
    for (n0, n1), r in raw.items():
        for name, kp, size in ((n0, r["keypoints0"], r["size0"]), (n1, r["keypoints1"], r["size1"])):
            points.setdefault(name, []).append(kp.reshape(-1, 2))
            scores.setdefault(name, []).append(r["scores"].reshape(-1))
            sizes[name] = size
    features, assign = {}, {}
    for name in sorted(points):
        kpts, kscores, idx = merge_keypoints(np.concatenate(points[name]), np.concatenate(scores[name]), cell_size)
        features[name] = {"keypoints": kpts, "scores": kscores, "descriptors": np.zeros((len(kpts), 0), np.float32),
                          "image_size": sizes[name]}
        splits = np.cumsum([len(p) for p in points[name]])[:-1]
        assign[name] = list(np.split(idx, splits))
    cursor = {name: 0 for name in points}
    matches = {}
    for (n0, n1), r in raw.items():  # the same order as above: each image's next chunk of assignments
        a0, a1 = assign[n0][cursor[n0]], assign[n1][cursor[n1]]
        cursor[n0] += 1
        cursor[n1] += 1
        matches[(n0, n1)] = _one_to_one(a0, a1, r["scores"].astype(np.float32), len(features[n0]["keypoints"]))
    return features, matches


def match_dense(pairs: str | Path, images: str | Path, features: str | Path, matches: str | Path, *,
                matcher: str = "detector-pair", overrides: Mapping[str, Any] | Sequence[str] = (),
                quantize: QuantizeConf | None = None, device: str | None = None,
                progress: bool = True) -> JobSummary:
    """Match every pair of ``pairs`` with an image matcher; write ``features`` and ``matches``.

    Args:
        pairs: text file, ``name0 name1`` per line (names relative to ``images``).
        images: image root.
        features: feature file to write (keypoints merged per image; see the module docstring).
        matches: match file to write; ``<matches stem>.raw.h5`` keeps the per-pair results for resuming.
        matcher: registered image matcher.
        overrides: its conf overrides.
        quantize: how keypoints merge per image.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.

    Returns:
        The job summary (``out`` is the match file).
    """
    pairs, images, features, matches = Path(pairs), Path(images), Path(features), Path(matches)
    check_h5_output(features, "features", "--features")
    check_h5_output(matches, "matches", "--out")
    with output_lock(features, "--features"), output_lock(matches, "--out"):
        return _match_dense(pairs, images, features, matches, matcher, overrides, quantize, device, progress)


def _match_dense(pairs: Path, images: Path, features: Path, matches: Path, matcher: str,
                 overrides: Mapping[str, Any] | Sequence[str], quantize: QuantizeConf | None, device: str | None,
                 progress: bool) -> JobSummary:
    if MATCHERS.kind_of(matcher) != "image":
        raise InputError(f"{matcher}: a feature matcher (it matches stored features); use 'visloc match-features' "
                         "for it, or an image matcher here")
    quantize = quantize or QuantizeConf()
    conf = MATCHERS.conf(matcher, overrides)
    record = conf_record(matcher, conf)
    raw = raw_path(matches)
    if conflicting_conf(raw, ATTR, record) is not None:
        raise InputError(f"{raw}: holds pairs matched by another matcher or conf; use another --matches "
                         "or delete it")
    pair_list = [p for p in read_pairs(pairs) if p[0] != p[1]]  # an image with itself adds nothing
    done = parts.staged_names(raw) | _raw_keys(raw)
    todo = [p for p in pair_list if matches_h5.names_to_pair(*p) not in done]
    summary = JobSummary(matches, already_done=len(pair_list) - len(todo))
    if todo:
        dev = pick_device(device)
        model = MATCHERS.build_conf(matcher, conf).to(dev)
        try:
            _match_pairs(todo, images, raw, model, dev, summary, progress)
        finally:
            parts.merge_parts(raw, parts.write_group, {ATTR: record})
    per_image, per_pair = merge_pairs(_read_raw(raw, pair_list), quantize.cell_size)
    attrs = {ATTR: record, "visloc_quantize": json.dumps(conf_to_dict(quantize))}
    features_h5.write_features_file(features, per_image, attrs)
    matches_h5.write_matches_file(matches, per_pair, {**attrs, "visloc_matcher": record})
    return summary


def _raw_keys(raw: Path) -> set[str]:
    keys: set[str] = set()
    if raw.exists():
        with h5py.File(raw, "r") as fd:
            fd.visititems(lambda k, o: keys.add(k) if isinstance(o, h5py.Group) and "scores" in o else None)
    return keys
