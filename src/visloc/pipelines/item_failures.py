"""Per-item failures of batch jobs: which errors belong to one image, and extraction that survives them.

An error tied to one item (``errors.ItemError``: an image too small for the network, a malformed
feature group, NaN descriptors; or an OpenCV error on one image) is recorded for that item in the
job's summary with its one-line reason, and the job goes on. Anything else (a conf, a vocabulary,
weights, out of memory, a bug) stops the job as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import torch

from visloc.errors import ItemError
from visloc.features.api import extract_tensor
from visloc.features.base import Extractor
from visloc.io.jobs import JobSummary
from visloc.io.sources import ImageRecord
from visloc.types import Features

logger = logging.getLogger(__name__)


def item_failure(error: BaseException) -> str | None:
    """The one-line reason when ``error`` is tied to the item being processed, else None."""
    if isinstance(error, ItemError):
        return str(error)
    if isinstance(error, cv2.error):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return f"OpenCV error: {lines[-1] if lines else type(error).__name__}"
    return None


def extract_each(model: Extractor, records: Sequence[ImageRecord], images: torch.Tensor, device: torch.device | str,
                 summary: JobSummary) -> list[tuple[ImageRecord, Features]]:
    """Features of a group of resized ``images``; an image the extractor refuses goes to ``summary.failed``.

    A failing group of several images is retried one image at a time, so one bad image costs only itself.
    """
    try:
        feats = extract_tensor(model, images, [r.scale for r in records], [r.original_size for r in records], device)
        return list(zip(records, feats, strict=True))
    except (ItemError, cv2.error) as e:
        if len(records) > 1:
            return [pair for i, rec in enumerate(records)
                    for pair in extract_each(model, [rec], images[i:i + 1], device, summary)]
        reason = item_failure(e) or str(e)
        summary.failed.append((records[0].name, reason))
        logger.warning("%s: %s", records[0].name, reason)
        return []
