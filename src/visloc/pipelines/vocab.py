"""Learn a VLAD vocabulary from the local descriptors of a folder of images (``visloc vocab``).

A vocabulary is for one VLAD extractor (``features.vlad``: ``vlad-aliked``, ``vlad-xfeat``) and is learned
from the descriptors of its local extractor (ALIKED-n16, XFeat).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from visloc.conf import conf_to_dict
from visloc.errors import InputError, ItemError
from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.features.vlad import ALIKED_SPEC, vlad_spec
from visloc.io import features_h5
from visloc.io.images import ImageError, list_images, read_image
from visloc.io.locks import output_lock
from visloc.io.outputs import check_file_output
from visloc.pipelines.common import pick_device
from visloc.pipelines.item_failures import item_failure
from visloc.retrieval.vlad import is_vocabulary, learn_vocabulary, save_vocabulary

logger = logging.getLogger(__name__)
EXTRACTOR = ALIKED_SPEC.local  # the local features of vlad-aliked, the default


@dataclass
class VocabSummary:
    """What ``build_vocabulary`` did."""

    out: Path
    num_images: int
    num_descriptors: int
    num_clusters: int
    dim: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        out = [f"vocab: {self.num_clusters} clusters x {self.dim}-d from {self.num_descriptors} descriptors of "
               f"{self.num_images} images ({len(self.failed)} skipped) in {self.seconds:.1f} s -> {self.out}"]
        return out + [f"  skipped {name}: {reason}" for name, reason in self.failed]


def build_vocabulary(image_dir: str | Path, out: str | Path, *, num_clusters: int = 64, max_images: int | None = None,
                     overrides: Mapping[str, Any] | Sequence[str] = (), seed: int = 0,
                     max_descriptors: int = 200_000, device: str | None = None,
                     progress: bool = True, names: Sequence[str] | None = None,
                     extractor: str = ALIKED_SPEC.name) -> VocabSummary:
    """Extract the local descriptors of the images below ``image_dir`` and write their k-means to ``out``.

    Args:
        image_dir: image root (searched recursively).
        out: vocabulary file (``vocab.pt``), written atomically.
        num_clusters: ``K``; the extractor's ``num_clusters`` must match it.
        max_images: use at most this many images (evenly spaced in name order); None uses all.
        overrides: the local extractor's conf overrides (``max_num_keypoints=1024``...).
        seed: seeds the descriptor subsample and k-means.
        max_descriptors: at most this many descriptors are clustered.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.
        names: learn from these images (relative to ``image_dir``) instead of every image below it.
        extractor: the VLAD extractor the vocabulary is for (its local extractor's descriptors are clustered).

    Raises:
        OutputError: ``out`` exists and is not a vocabulary (a photo, a folder, a network's weights).
        OutputLockedError: another job is writing ``out``.
    """
    image_dir, out = Path(image_dir), Path(out)
    if max_images is not None and max_images < 1:
        raise InputError(f"max_images: expected >= 1, got {max_images}")
    if num_clusters < 1:  # before the extraction (k-means refuses it only after)
        raise InputError(f"num_clusters: expected >= 1, got {num_clusters}")
    check_file_output(out, "VLAD vocabulary", is_vocabulary)
    with output_lock(out):
        names = evenly_spaced(list_images(image_dir) if names is None else list(names), max_images)
        local = vlad_spec(extractor).local
        conf = EXTRACTORS.conf(local, overrides)
        start = time.perf_counter()
        descs, failed = _descriptors(image_dir, names, local, conf, device, progress)
        x = np.concatenate(descs)
        _learn_and_save(x, out, num_clusters, seed, max_descriptors, conf_to_dict(conf), len(descs), local)
    return VocabSummary(out, len(descs), len(x), num_clusters, x.shape[1], time.perf_counter() - start, failed)


def _descriptors(image_dir: Path, names: list[str], local: str, conf: Any, device: str | None,
                 progress: bool) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """The ``local`` extractor's descriptors of each readable image of ``names``, and the failures of the others."""
    dev = pick_device(device)
    model = EXTRACTORS.entry(local).builder(conf).to(dev)
    descs, failed = [], []
    for name in tqdm(names, desc="vocab: extract", disable=not progress, unit="img"):
        try:
            feats = extract_image(model, read_image(image_dir / name, grayscale=False), device=dev)
            descs.append(feats.descriptors.numpy())
        except (ImageError, ItemError, cv2.error) as e:  # this image only: recorded, the job goes on
            failed.append((name, item_failure(e) or str(e).removeprefix(f"{image_dir / name}: ")))
            logger.warning("%s: %s", name, failed[-1][1])
    if not descs:
        raise ImageError(f"{image_dir}: no readable images to learn a vocabulary from")
    return descs, failed


def evenly_spaced(names: list[str], max_images: int | None) -> list[str]:
    """At most ``max_images`` of ``names``, evenly spaced in their order (all of them when None)."""
    if max_images is None or len(names) <= max_images:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, max_images).round().astype(int)]


def _learn_and_save(x: np.ndarray, out: Path, num_clusters: int, seed: int, max_descriptors: int,
                    extractor_conf: dict[str, Any], num_images: int, local: str) -> None:
    centroids = learn_vocabulary(x, num_clusters, seed, max_descriptors)
    vocab_conf = {"num_clusters": num_clusters, "seed": seed, "max_descriptors": max_descriptors,
                  "extractor_conf": extractor_conf}
    save_vocabulary(out, centroids, vocab_conf, {"extractor": local, "images": num_images})


def vocabulary_from_features(features: str | Path, names: Sequence[str], out: str | Path, *, num_clusters: int = 64,
                             max_images: int | None = None, extractor_conf: dict[str, Any], seed: int = 0,
                             max_descriptors: int = 200_000, local: str = EXTRACTOR) -> int:
    """The vocabulary ``build_vocabulary`` learns, from local descriptors already in a feature file.

    Args:
        features: a feature file of ``local`` (the conf ``extractor_conf``, recorded in the vocabulary).
        names: images of ``features`` to learn from; ``max_images`` of them, evenly spaced, are used.
        out: vocabulary file, written atomically.
        num_clusters: ``K``.
        max_images: as ``build_vocabulary``'s.
        extractor_conf: the resolved conf the descriptors were extracted with.
        seed: seeds the descriptor subsample and k-means.
        max_descriptors: at most this many descriptors are clustered.
        local: the registered local extractor of the descriptors (recorded in the vocabulary).

    Returns:
        The number of descriptors the vocabulary was learned from.
    """
    used = evenly_spaced(list(names), max_images)
    if not used:
        raise ImageError(f"{features}: no images to learn a vocabulary from")
    x = np.concatenate([features_h5.read_features(features, n)["descriptors"] for n in used])
    _learn_and_save(x, Path(out), num_clusters, seed, max_descriptors, extractor_conf, len(used), local)
    return len(x)
