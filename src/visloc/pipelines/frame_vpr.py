"""Frame baselines of event place recognition: each place's nearest rendered frame through a global extractor.

A place of an event traversal (``events.drive_dataset.Places``) is the time ``t_us`` its window ends; its
frame is the traversal's rendered frame (``frames.txt``, 10 Hz by default) nearest to ``t_us``, so the frame is
at most half a frame interval (50 ms) from the place. The frame goes through a registered extractor with a
global descriptor (``hfnet-global`` with the shipped student, ``vlad-aliked``, ``netvlad``...), and the
descriptors are scored on the same places and positions as the events (``pipelines.evaluate_event_vpr``).

- ``vlad-aliked`` without a ``vocabulary`` override gets one learned by ``pipelines.vocab.build_vocabulary``
  from the database traversal's frames only (at most ``vocab_images`` of them, evenly spaced), never from a
  query traversal.
- A method whose weights are absent (``netvlad`` without ``weights=``, ``hfnet-global`` without the shipped
  student) is skipped with a one-line reason; weights a user named that fail to load are an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from visloc.errors import InputError
from visloc.events.drive_dataset import EventTraversal
from visloc.features import EXTRACTORS
from visloc.features.api import extract_batch, resize_for
from visloc.features.base import Extractor
from visloc.io.images import read_image
from visloc.weights.load import WeightsError

logger = logging.getLogger(__name__)

#: the frame baselines of ``--frames`` when a user names none: the two that run with shipped weights
DEFAULT_FRAME_METHODS = ("hfnet-global", "vlad-aliked")


@dataclass(frozen=True)
class FrameMethod:
    """A frame baseline.

    Attributes:
        label: its name in the results (unique among the methods of a run).
        extractor: a registered extractor with a global descriptor.
        overrides: its conf overrides (``key=value``).
    """

    label: str
    extractor: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, names: Sequence[str], overrides: Sequence[str] = ()) -> tuple[FrameMethod, ...]:
        """Methods named by extractor, with ``EXTRACTOR:key=value`` overrides routed to their extractor.

        Raises:
            InputError: an override without ``EXTRACTOR:`` or for an extractor not in ``names``, a name twice.
        """
        names = [n.strip() for n in names if n.strip()]
        if len(set(names)) != len(names):
            raise InputError(f"frame methods: a name is given twice in {names}")
        per: dict[str, list[str]] = {n: [] for n in names}
        for item in overrides:
            name, sep, kv = item.partition(":")
            if not sep or name not in per:
                raise InputError(f"frame override {item!r}: expected EXTRACTOR:key=value with EXTRACTOR one of "
                                 f"{', '.join(names) or '(no --frames)'}")
            per[name].append(kv)
        return tuple(cls(n, n, tuple(per[n])) for n in names)


def nearest_frames(traversal: EventTraversal, t_us: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The frame nearest in time to each of ``t_us [P]`` (ties: the earlier frame).

    Returns:
        ``P`` frame names (relative to the drive's root) and ``|t_frame - t_us|`` ``[P]`` int64 µs.
    """
    if not traversal.frames:
        raise InputError(f"{traversal.events.parent}: no rendered frames in frames.txt (frame baselines need them)")
    times = np.array([t for t, _ in traversal.frames], dtype=np.int64)
    order = np.argsort(times, kind="stable")
    times = times[order]
    t = np.asarray(t_us, dtype=np.int64)
    right = np.clip(np.searchsorted(times, t), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    pick = np.where(np.abs(times[left] - t) <= np.abs(times[right] - t), left, right)
    names = [traversal.frames[int(order[i])][1] for i in pick]
    return names, np.abs(times[pick] - t)


def _vocabulary(method: FrameMethod, root: Path, database: EventTraversal, work_dir: Path, vocab_images: int,
                device: str | None, progress: bool) -> str:
    """A vocabulary file for ``vlad-aliked`` learned from the database traversal's frames."""
    from visloc.pipelines.vocab import build_vocabulary

    conf = EXTRACTORS.conf(method.extractor, method.overrides)
    out = work_dir / f"vocab-{database.name}-{conf.num_clusters}.pt"
    if not out.is_file():
        aliked = [f"max_num_keypoints={conf.max_num_keypoints}", f"detection_threshold={conf.detection_threshold}"]
        summary = build_vocabulary(root, out, num_clusters=conf.num_clusters, max_images=vocab_images,
                                   overrides=aliked, device=device, progress=progress,
                                   names=[name for _, name in database.frames])
        logger.info("%s", summary.lines()[0])
    return str(out)


def build_frame_extractor(method: FrameMethod, root: Path, database: EventTraversal, work_dir: Path, *,
                          vocab_images: int = 100, device: str | None = None, progress: bool = False
                          ) -> tuple[Extractor | None, tuple[str, ...], str | None]:
    """The extractor of ``method`` (a vocabulary learned first when it needs one), or why it is skipped.

    Returns:
        ``(extractor, overrides used, None)``, or ``(None, overrides, reason)`` when its weights are absent.

    Raises:
        InputError: the extractor has no global descriptor. WeightsError: weights the user named do not load.
    """
    overrides = method.overrides
    caps = EXTRACTORS.capabilities(method.extractor, EXTRACTORS.conf(method.extractor, overrides))
    if "global" not in caps.outputs:
        raise InputError(f"frame method {method.label}: extractor {method.extractor!r} has no global descriptor")
    if "vocabulary" in caps.needs:
        vocab = _vocabulary(method, root, database, work_dir, vocab_images, device, progress)
        overrides = (*overrides, f"vocabulary={vocab}")
    missing = sorted(caps.needs - {"vocabulary"})
    if missing:
        return None, overrides, (f"{method.label}: skipped, needs {', '.join(missing)} that visloc does not ship "
                                 f"(--frame-set {method.extractor}:{missing[0]}=FILE)")
    try:
        return EXTRACTORS.build(method.extractor, overrides), overrides, None
    except WeightsError as e:
        if any(o.startswith("weights=") for o in overrides):
            raise
        return None, overrides, f"{method.label}: skipped, {str(e).splitlines()[0]}"


def describe_frames(extractor: Extractor, root: Path, names: Sequence[str], *, batch_size: int = 8,
                    device: str | torch.device = "cpu", progress: bool = False, desc: str = "frames") -> np.ndarray:
    """Global descriptors ``[P, G]`` float32 of the frames ``names`` (relative to ``root``; repeats computed once)."""
    unique = list(dict.fromkeys(names))
    rows: dict[str, np.ndarray] = {}
    model = extractor.to(device)
    for i in tqdm(range(0, len(unique), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = unique[i:i + batch_size]
        images = [resize_for(model, read_image(root / n)) for n in chunk]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, r in enumerate(images):
            by_shape.setdefault(r.image.shape, []).append(j)
        for idx in by_shape.values():
            for j, f in zip(idx, extract_batch(model, [images[j] for j in idx], device), strict=True):
                if f.global_descriptor is None:
                    raise InputError(f"{root / chunk[j]}: extractor gave no global descriptor")
                rows[chunk[j]] = f.global_descriptor.float().numpy()
    if not names:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([rows[n] for n in names]).astype(np.float32)


__all__ = ["DEFAULT_FRAME_METHODS", "FrameMethod", "build_frame_extractor", "describe_frames", "nearest_frames"]
