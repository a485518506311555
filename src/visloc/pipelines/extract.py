"""Extract local features for a folder of images into an HDF5 feature file (hloc layout).

Resumable: finished images are staged one by one and merged atomically; a re-run skips images that
are in the file or staged. A bad image is skipped with a one-line reason and listed at the end.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visloc.errors import VislocError
from visloc.features import EXTRACTORS
from visloc.features.api import extract_array
from visloc.io import features_h5
from visloc.io.images import ImageError, list_images, read_image
from visloc.io.jobs import JobSummary
from visloc.io.parts import parts_dir
from visloc.pipelines.common import conf_record, conflicting_conf, pick_device

logger = logging.getLogger(__name__)
ATTR = "visloc_extractor"


class ExtractError(VislocError, ValueError):
    """An extraction job that cannot start (bad folder, conflicting output)."""


def _check_compatible(out: Path, record: str) -> None:
    other = conflicting_conf(out, ATTR, record)
    if other is not None:
        raise ExtractError(f"{out}: holds features of another extractor or conf ({other}); "
                           "use another --out or --overwrite")


def extract_features(image_dir: str | Path, out: str | Path, extractor: str = "aliked-n16",
                     overrides: Mapping[str, Any] | Sequence[str] = (), image_list: Sequence[str] | None = None,
                     as_half: bool = False, overwrite: bool = False, device: str | None = None,
                     progress: bool = True) -> JobSummary:
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

    Returns:
        The job summary; the resolved conf is stored in the file's ``visloc_extractor`` attribute.
    """
    image_dir, out = Path(image_dir), Path(out)
    try:
        names = list(image_list) if image_list is not None else list_images(image_dir)
    except ImageError as e:
        raise ExtractError(str(e)) from None
    conf = EXTRACTORS.conf(extractor, overrides)
    record = conf_record(extractor, conf)
    if overwrite:
        out.unlink(missing_ok=True)
        shutil.rmtree(parts_dir(out), ignore_errors=True)
    _check_compatible(out, record)
    done = features_h5.done_names(out)
    todo = [n for n in names if n not in done]
    summary = JobSummary(out, already_done=len(names) - len(todo))
    if todo:
        dev = pick_device(device)
        model = EXTRACTORS.entry(extractor).builder(conf).to(dev)
        try:
            for name in tqdm(todo, desc=f"extract {extractor}", disable=not progress, unit="img"):
                try:
                    image = read_image(image_dir / name, grayscale=False)
                    feats = extract_array(model, image, device=dev)
                except ImageError as e:
                    summary.failed.append((name, str(e).removeprefix(f"{image_dir / name}: ")))
                    logger.warning("%s", e)
                    continue
                features_h5.stage_features(out, name, feats, as_half=as_half)
                summary.done += 1
        finally:  # also on Ctrl-C: what finished is merged, the rest stays staged
            features_h5.commit_features(out, {ATTR: record})
    elif not out.exists() and not names:
        raise ExtractError(f"{image_dir}: no images found")
    return summary
