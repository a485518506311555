"""Extract local features for a folder of images into an HDF5 feature file (hloc layout).

Resumable: finished images are staged one by one and merged atomically; a re-run skips images that
are in the file or staged. A bad image is skipped with a one-line reason and listed at the end.
One writer per output: the job holds ``out``'s lock (``io.locks``) from its plan to its commit. Before
any work ``out`` is checked to be a feature file (or absent) in a writable folder (``io.outputs``), the
image names to hold no whitespace (``io.names``), and staged parts to have been made with this conf.
``plan_extraction`` and ``stage_images`` are the two halves a distributed run reuses
(``pipelines.extract_ray``): the first resolves the job on the driver, the second runs in each task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from visloc.errors import InputError, VislocError
from visloc.features import EXTRACTORS
from visloc.features.base import Extractor
from visloc.io import features_h5, parts, shards
from visloc.io.images import ImageError, list_images
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.io.names import check_names
from visloc.io.outputs import check_h5_output
from visloc.io.parts import parts_dir
from visloc.io.sources import ImageBatch, ImageRecord, ImageSource, ResizeSpec, image_loader
from visloc.pipelines.common import conf_record, conflicting_conf, pick_device
from visloc.pipelines.item_failures import extract_each

logger = logging.getLogger(__name__)
ATTR = "visloc_extractor"


class ExtractError(VislocError, ValueError):
    """An extraction job that cannot start (bad folder, conflicting output)."""


@dataclass(frozen=True)
class ExtractPlan:
    """A resolved extraction job: the images still to do, the extractor's conf and its record.

    Attributes:
        image_dir: image root.
        out: the feature file.
        extractor: registered extractor name.
        conf: its resolved conf.
        record: JSON of name and conf, stored in ``out``'s ``visloc_extractor`` attribute.
        num_names: images of the job, done or not.
        todo: names neither in ``out`` nor staged, in the job's order.
    """

    image_dir: Path
    out: Path
    extractor: str
    conf: Any
    record: str
    num_names: int
    todo: tuple[str, ...]

    def summary(self) -> JobSummary:
        """A summary with the images already done counted."""
        return JobSummary(self.out, already_done=self.num_names - len(self.todo))


def _check_compatible(out: Path, record: str) -> None:
    other = conflicting_conf(out, ATTR, record)
    if other is not None:
        raise ExtractError(f"{out}: holds features of another extractor or conf ({other}); "
                           "use another --out or --overwrite")


def plan_extraction(image_dir: str | Path, out: str | Path, *, extractor: str,
                    overrides: Mapping[str, Any] | Sequence[str] = (), image_list: Sequence[str] | None = None,
                    overwrite: bool = False) -> ExtractPlan:
    """Resolve a job (arguments as ``extract_features``): list the images, check ``out``, find what is left.

    Call it holding ``out``'s lock (``io.locks.output_lock``): with ``overwrite`` it removes ``out``.

    Raises:
        ExtractError: no image folder, no images, or ``out`` holds another extractor's features.
        OutputError: ``out`` is not a feature file (a photo, a match file, a folder) or cannot be written.
        ImageNameError: image names with whitespace.
        StagedConfError: parts staged by an interrupted run with another conf (without ``overwrite``).
    """
    image_dir, out = Path(image_dir), Path(out)
    check_h5_output(out, "features")
    try:
        names = list(image_list) if image_list is not None else list_images(image_dir)
    except ImageError as e:
        raise ExtractError(str(e)) from None
    check_names(names, image_dir, "rename them, or leave them out of --image-list")
    conf = EXTRACTORS.conf(extractor, overrides)
    record = conf_record(extractor, conf)
    if overwrite:
        shards.remove(out)
    parts.check_staged(out, record)
    _check_compatible(out, record)
    if not names and not out.exists():
        raise ExtractError(f"{image_dir}: no images found")
    done = features_h5.done_names(out)
    todo = tuple(n for n in names if n not in done)
    if todo:
        parts.claim(out, record)
    return ExtractPlan(image_dir, out, extractor, conf, record, len(names), todo)


def extract_features(image_dir: str | Path, out: str | Path, *, extractor: str = "aliked-n16",
                     overrides: Mapping[str, Any] | Sequence[str] = (), image_list: Sequence[str] | None = None,
                     as_half: bool = False, overwrite: bool = False, device: str | None = None,
                     progress: bool = True, batch_size: int = 1, num_workers: int | None = None,
                     crops: Mapping[str, Sequence[int]] | None = None) -> JobSummary:
    """Extract features of every image below ``image_dir`` (or of ``image_list``) into ``out``.

    Args:
        image_dir: image root; group names are paths relative to it.
        out: HDF5 feature file; created or extended.
        extractor: registered extractor name.
        overrides: conf overrides (mapping or ``key=value`` strings).
        image_list: names relative to ``image_dir``; default: every image found.
        as_half: store descriptors and scores as float16.
        overwrite: start afresh, discarding ``out`` and staged work.
        device: ``cpu``, ``cuda``, or None for automatic.
        progress: show a progress bar.
        batch_size: images of equal resized size per network call (capped by the extractor's
            ``max_batch``); 1 keeps results bit-identical to single-image extraction.
        num_workers: processes that read and resize images ahead of the network (``io.sources``);
            None: one when there are at least 8 images, else none.
        crops: per name, a box ``(x1, y1, x2, y2)`` (pixel edges) the image is cropped to first, at the
            scale it has in the resized full image (``io.sources.crop_target_size``); its features are in
            the crop's pixels. Not part of the file's record: keep cropped images in a file of their own.

    Returns:
        The job summary; the resolved conf is stored in the file's ``visloc_extractor`` attribute.
    """
    check_loader_args(batch_size, num_workers)
    with output_lock(out):
        plan = plan_extraction(image_dir, out, extractor=extractor, overrides=overrides, image_list=image_list,
                               overwrite=overwrite)
        summary = plan.summary()
        if plan.todo:
            try:
                dev = pick_device(device)
                model = EXTRACTORS.build_conf(extractor, plan.conf).to(dev)
                workers = num_workers if num_workers is not None else (1 if len(plan.todo) >= 8 else 0)
                stage_images(model, plan, plan.todo, summary, as_half=as_half, device=dev, batch_size=batch_size,
                             num_workers=workers, crops=crops, progress=progress)
            finally:  # also on Ctrl-C: what finished is merged, the rest stays staged
                commit(plan)
        elif parts_dir(plan.out).is_dir():  # a run killed after staging its last image, before its merge
            commit(plan)
    return summary


def commit(plan: ExtractPlan) -> None:
    """Merge the staged images of ``plan`` into its file atomically, with the extractor's record.

    A job that staged nothing creates no file: a run that failed at its first image (a conf error, a
    model that cannot be built) leaves nothing that would refuse its corrected re-run.
    """
    if plan.out.exists() or parts.staged_entries(plan.out):
        features_h5.commit_features(plan.out, {ATTR: plan.record})
    else:
        parts.discard_merged(plan.out, [])


def check_loader_args(batch_size: int, num_workers: int | None) -> None:
    """Raise ``InputError`` unless ``batch_size >= 1`` and ``num_workers`` is None or ``>= 0``."""
    if batch_size < 1 or (num_workers is not None and num_workers < 0):
        raise InputError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")


def stage_images(model: Extractor, plan: ExtractPlan, names: Sequence[str], summary: JobSummary, *,
                 as_half: bool, device: torch.device, batch_size: int, num_workers: int,
                 crops: Mapping[str, Sequence[int]] | None, progress: bool) -> None:
    """Extract ``names`` of ``plan`` with ``model`` and stage each image as it finishes (no commit).

    Each finished image is counted in ``summary.done``, each unreadable one listed in ``summary.failed``.
    """
    source = ImageSource(plan.image_dir, names, ResizeSpec.from_conf(plan.conf), crops)
    loader = image_loader(source, batch_size, model.max_batch, num_workers, pin_memory=device.type == "cuda")
    with tqdm(total=len(names), desc=f"extract {plan.extractor}", disable=not progress, unit="img") as bar:
        for batch in loader:
            _extract_batch(model, batch, plan.image_dir, plan.out, as_half, device, summary)
            bar.update(len(batch.records) + len(batch.errors) + len(batch.leftover))


def _extract_batch(model: Extractor, batch: ImageBatch, image_dir: Path, out: Path, as_half: bool,
                   device: torch.device, summary: JobSummary) -> None:
    """Extract one loader batch and stage each image's features; bad images go to the summary."""
    for rec in batch.errors:
        summary.failed.append((rec.name, str(rec.error).removeprefix(f"{image_dir / rec.name}: ")))
        logger.warning("%s", rec.error)
    groups: list[tuple[list[ImageRecord], torch.Tensor]] = []
    if batch.images is not None:
        groups.append((batch.records, batch.images))
    for r in batch.leftover:
        if r.image is None:  # collate_images puts only good records in leftover
            raise RuntimeError(f"{r.name}: a leftover record without an image")
        groups.append(([r], r.image[None]))
    for records, images in groups:
        for rec, f in extract_each(model, records, images, device, summary):
            features_h5.stage_features(out, rec.name, f.numpy(), as_half=as_half)
            summary.done += 1
