"""``visloc data gldv2 prepare``: a GLDv2 folder's labels, split and image locations, without any conversion.

DELF converts GLDv2 into 128 TFRecord shards (hundreds of GB, hours) before training; here nothing is
copied. One pass reads the CSVs and the tars' headers and writes the index (``data.gldv2_index``):

1. Labels of ``train_clean.csv`` (``clean``, when present) or ``train.csv``.
2. Locations: per image, its extracted file (``root/<a>/<b>/<c>/<id>.jpg``) or its member in an
   ``images_NNN.tar`` (found by one pass over each tar's headers: data offset and size). ``locate``:
   ``auto`` prefers the extracted file, ``tars`` reads only the tars, ``files`` only extracted files.
   A tar that is unsafe, truncated or (with ``verify_md5``) fails its md5 is skipped and named; its
   images count as missing.
3. Ids listed in the CSV but found nowhere are reported (``missing.txt``, the summary) and left out;
   the remaining classes are relabelled ``0..K-1`` and split per class (``data.gldv2_split``: DELF's
   rule, at least one validation image per class).

Every file is written atomically; a re-run rewrites the index from scratch (it takes one pass over the
headers, minutes on the 500 tars of GLDv2 train).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from visloc.conf import ConfError
from visloc.data.errors import DatasetError
from visloc.data.gldv2_index import (
    INDEX_CSV,
    INDEX_JSON,
    MISSING_TXT,
    IndexEntry,
    scan_tar,
    write_index,
    write_record,
)
from visloc.data.gldv2_split import RELABELING_CSV, build_split, read_labels, write_relabeling
from visloc.data.world.gldv2_layout import TRAIN_CLEAN_CSV, TRAIN_CSV, image_relpath, verify_md5
from visloc.io.atomic import atomic_write_text
from visloc.io.locks import output_lock

logger = logging.getLogger(__name__)
TAR_GLOB = "images_[0-9][0-9][0-9].tar"


@dataclass(frozen=True)
class Gldv2PrepareConf:
    """How to prepare a GLDv2 folder.

    Attributes:
        clean: labels of ``train_clean.csv`` (GLDv2-clean) when present, else ``train.csv``'s.
        val_fraction: per class, ``max(1, int(val_fraction * n))`` images go to validation; 0: none.
        seed: seed of the per-class shuffle.
        locate: ``auto`` (extracted file when present, else the tar member), ``tars`` or ``files``.
        verify_md5: check each tar against its ``md5.images_NNN.txt`` first (reads every byte: hours).
    """

    clean: bool = True
    val_fraction: float = 0.2
    seed: int = 0
    locate: Literal["auto", "tars", "files"] = "auto"
    verify_md5: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfError(f"Gldv2PrepareConf.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.locate not in ("auto", "tars", "files"):
            raise ConfError(f"Gldv2PrepareConf.locate must be auto, tars or files, got {self.locate!r}")


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare_gldv2`` wrote and found.

    Attributes:
        out: the folder of the index.
        num_classes: ``K`` after dropping classes with no image found.
        train: training images.
        val: validation images.
        from_tars: images located in a tar (the others are extracted files).
        missing: ids listed but found nowhere (sorted).
        skipped_tars: ``(tar name, reason)`` of the tars left out.
    """

    out: Path
    num_classes: int
    train: int
    val: int
    from_tars: int
    missing: tuple[str, ...]
    skipped_tars: tuple[tuple[str, str], ...]

    def lines(self) -> list[str]:
        """A human summary, one finding a line."""
        out = [f"prepare: {self.num_classes} classes, {self.train} training and {self.val} validation images "
               f"({self.from_tars} read from tars) -> {self.out / INDEX_CSV}"]
        if self.missing:
            out.append(f"prepare: {len(self.missing)} listed images found neither extracted nor in a tar "
                       f"(left out, listed in {self.out / MISSING_TXT}), e.g. {', '.join(self.missing[:3])}")
        out += [f"prepare: skipped {name}: {reason}" for name, reason in self.skipped_tars]
        return out


def _scan_tars(root: Path, verify: bool, progress: Callable[[str], None] | None
               ) -> tuple[dict[str, tuple[str, int, int]], list[tuple[str, str]]]:
    located: dict[str, tuple[str, int, int]] = {}
    skipped = []
    for tar in sorted(root.glob(TAR_GLOB)):
        try:
            if verify:
                verify_md5(tar, root / f"md5.{tar.stem}.txt")
            members = scan_tar(tar)
        except (DatasetError, OSError) as e:
            skipped.append((tar.name, str(e).removeprefix(f"{tar}: ")))
            logger.warning("%s", e)
            continue
        for image_id, (offset, size) in members.items():
            located.setdefault(image_id, (tar.name, offset, size))
        if progress is not None:
            progress(tar.name)
    return located, skipped


def prepare_gldv2(root: str | Path, out: str | Path | None = None, conf: Gldv2PrepareConf | None = None,
                  progress: Callable[[str], None] | None = None) -> PrepareSummary:
    """Write the index of the GLDv2 folder ``root`` into ``out`` (default ``root``); see the module docstring.

    ``progress`` is called with each tar's name once scanned. ``DatasetError`` when the CSVs are missing or
    malformed, or when no listed image is found at all; ``OutputLockedError`` when another job writes the
    index in ``out`` (``io.locks.output_lock`` on its ``gldv2-index.csv``).
    """
    conf = conf or Gldv2PrepareConf()
    root = Path(root).resolve()
    out = Path(out) if out is not None else root
    if not (root / TRAIN_CSV).is_file() and not (root / TRAIN_CLEAN_CSV).is_file():
        raise DatasetError(f"{root}: neither {TRAIN_CSV} nor {TRAIN_CLEAN_CSV} found (a GLDv2 train folder?)")
    with output_lock(out / INDEX_CSV):
        labels = read_labels(root, conf.clean)
        located, skipped = ({}, []) if conf.locate == "files" else _scan_tars(root, conf.verify_md5, progress)
        locations: dict[str, tuple[str, str, int, int]] = {}
        for image_id in labels:
            rel = image_relpath(image_id)
            if conf.locate != "tars" and (root / rel).is_file():
                locations[image_id] = (rel, "", 0, (root / rel).stat().st_size)
            elif image_id in located:
                tar, offset, size = located[image_id]
                locations[image_id] = ("", tar, offset, size)
        missing = tuple(sorted(set(labels) - set(locations)))
        present = {i: lid for i, lid in labels.items() if i in locations}
        if not present:
            raise DatasetError(f"{root}: none of the {len(labels)} listed images was found "
                               f"({'extracted' if conf.locate == 'files' else 'extracted or in ' + TAR_GLOB})")
        split = build_split(present, conf.val_fraction, conf.seed)
        parts: tuple[tuple[Literal["train", "val"], Sequence[tuple[str, int]]], ...] = (
            ("train", split.train), ("val", split.val))
        entries = [IndexEntry(i, label, present[i], name, *locations[i]) for name, items in parts for i, label in items]
        out.mkdir(parents=True, exist_ok=True)
        write_index(out / INDEX_CSV, entries)
        write_relabeling(out / RELABELING_CSV, split.old_labels)
        atomic_write_text(out / MISSING_TXT, "".join(f"{i}\n" for i in missing))
        summary = PrepareSummary(out, split.num_classes, len(split.train), len(split.val),
                                 sum(1 for e in entries if e.tar), missing, tuple(skipped))
        write_record(out / INDEX_JSON, {"root": str(root), "conf": asdict(conf), "num_classes": summary.num_classes,
                                        "train": summary.train, "val": summary.val, "from_tars": summary.from_tars,
                                        "missing": len(missing), "skipped_tars": [list(s) for s in skipped]})
        return summary
