"""GLDv2 labels, relabelling and the per-class train / validation split (DELF's ``build_image_dataset.py`` rule).

- Labels (``read_labels``): ``image id -> landmark_id`` of ``train_clean.csv`` (GLDv2-clean) or ``train.csv``.
- Relabelling (``relabel``): landmark ids mapped to ``0..K-1`` in sorted order; ``relabeling.csv``
  (``write_relabeling``) holds ``new_label,old_label`` as DELF's file does.
- Split (``split_per_class``): per class (in label order; its image ids sorted), a shuffle by a seeded numpy
  ``Generator``, then ``max(1, int(fraction * n))`` images to validation and the rest to training, as
  ``build_image_dataset.py`` (which uses ``RandomState(MT19937(SeedSequence(seed)))``: the same rule, other
  draws). A class of one image therefore goes to validation whole and is never trained on.

One home for the rule: ``visloc data gldv2 prepare`` (``data.gldv2_prepare``) and the DELG recipe
(``train.delg.data``) both split with it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visloc.data.world.gldv2_layout import TRAIN_CLEAN_CSV, TRAIN_CSV, read_train_clean_csv, read_train_csv
from visloc.io.atomic import atomic_write_text

RELABELING_CSV = "relabeling.csv"


def read_labels(root: str | Path, clean: bool = True) -> dict[str, int]:
    """``image id -> landmark_id`` from the CSVs alone (no tar is opened): what ``Gldv2Train.labels`` gives."""
    root = Path(root)
    if clean and (root / TRAIN_CLEAN_CSV).is_file():
        return {i: lid for lid, ids in read_train_clean_csv(root / TRAIN_CLEAN_CSV).items() for i in ids}
    return {r.id: r.landmark_id for r in read_train_csv(root / TRAIN_CSV)}


def relabel(labels: Mapping[str, int]) -> tuple[dict[str, int], list[int]]:
    """``(image id -> new label, old labels)``: landmark ids mapped to ``0..K-1`` in sorted order."""
    old = sorted(set(labels.values()))
    new = {lid: k for k, lid in enumerate(old)}
    return {i: new[lid] for i, lid in labels.items()}, old


def split_per_class(labels: Mapping[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)``: per class ``max(1, int(fraction * n))`` to validation (module docstring).

    ``fraction`` 0 puts every image in training. Both lists are in class order, each class shuffled.
    """
    by_class: dict[int, list[str]] = {}
    for i, lab in labels.items():
        by_class.setdefault(lab, []).append(i)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for lab in sorted(by_class):
        ids = sorted(by_class[lab])
        ids = [ids[k] for k in rng.permutation(len(ids))]
        cut = max(1, int(fraction * len(ids))) if fraction > 0 else 0
        val += ids[:cut]
        train += ids[cut:]
    return train, val


@dataclass(frozen=True)
class LandmarkSplit:
    """The relabelled split of a GLDv2 folder.

    Attributes:
        train: ``(image id, label)`` of the training images.
        val: ``(image id, label)`` of the validation images.
        old_labels: landmark id of each new label ``[K]``.
    """

    train: Sequence[tuple[str, int]]
    val: Sequence[tuple[str, int]]
    old_labels: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """``K``."""
        return len(self.old_labels)


def build_split(labels: Mapping[str, int], fraction: float, seed: int) -> LandmarkSplit:
    """Relabel ``labels`` (``image id -> landmark_id``) and split them per class."""
    new, old = relabel(labels)
    train, val = split_per_class(new, fraction, seed)
    return LandmarkSplit(tuple((i, new[i]) for i in train), tuple((i, new[i]) for i in val), tuple(old))


def write_relabeling(path: str | Path, old_labels: Sequence[int]) -> Path:
    """``relabeling.csv``: ``new_label,old_label`` per class (DELF's file), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("new_label", "old_label"))
    writer.writerows((k, int(lid)) for k, lid in enumerate(old_labels))
    return atomic_write_text(path, buf.getvalue())
