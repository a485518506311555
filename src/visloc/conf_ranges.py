"""Range checks for conf fields, run from each conf's ``__post_init__``: no conf is built out of range.

Each check names the conf class, the field and the value in one line (``ConfError``), so an
out-of-range value never reaches OpenCV or a network (ORB ``n_levels=0`` segfaults OpenCV; a
negative keypoint budget silently gave no keypoints). Keypoint budgets follow one convention:
an integer >= 1, or -1 for "no budget" where the extractor supports it.
"""

from __future__ import annotations

import math
from typing import Any

from visloc.conf import ConfError

#: the smallest image side a conf may ask for (``io.images.resize_image`` refuses less)
MIN_SIDE = 8


def fail(conf: Any, name: str, expected: str) -> None:
    """Raise the one-line ``ConfError`` for field ``name`` of ``conf``."""
    raise ConfError(f"{type(conf).__name__}.{name}: expected {expected}, got {getattr(conf, name)!r}")


def _number(conf: Any, name: str) -> float | None:
    value = getattr(conf, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(conf, name, "a finite number")
    return float(value)


def at_least(conf: Any, low: float, *names: str) -> None:
    """Each of ``names`` (None allowed) is ``>= low``."""
    for name in names:
        value = _number(conf, name)
        if value is not None and value < low:
            fail(conf, name, f">= {low:g}")


def above(conf: Any, low: float, *names: str) -> None:
    """Each of ``names`` (None allowed) is ``> low``."""
    for name in names:
        value = _number(conf, name)
        if value is not None and value <= low:
            fail(conf, name, f"> {low:g}")


def between(conf: Any, low: float, high: float, *names: str) -> None:
    """Each of ``names`` (None allowed) lies in ``[low, high]``."""
    for name in names:
        value = _number(conf, name)
        if value is not None and not low <= value <= high:
            fail(conf, name, f"a value in [{low:g}, {high:g}]")


def odd_window(conf: Any, *names: str) -> None:
    """Each of ``names`` is a positive odd window side."""
    for name in names:
        value = getattr(conf, name)
        if not isinstance(value, int) or value < 1 or value % 2 == 0:
            fail(conf, name, "a positive odd number")


def keypoint_budget(conf: Any, name: str = "max_num_keypoints", unlimited: bool = True) -> None:
    """``name`` is ``>= 1``, or ``-1`` (no budget) where ``unlimited`` is supported."""
    value = getattr(conf, name)
    if value >= 1 or (unlimited and value == -1):
        return
    fail(conf, name, ">= 1 or -1 (no budget)" if unlimited else ">= 1")


def image_size(conf: Any) -> None:
    """``resize_max`` (None: keep the size) and ``resize_to`` / ``size`` ``(W, H)`` are >= 8 pixels."""
    if getattr(conf, "resize_max", None) is not None and conf.resize_max < MIN_SIDE:
        fail(conf, "resize_max", f">= {MIN_SIDE} pixels (or none)")
    for name in ("resize_to", "size"):
        size = getattr(conf, name, None)
        if size is not None and (len(size) != 2 or min(size) < MIN_SIDE):
            fail(conf, name, f"(W, H) with sides >= {MIN_SIDE}")


def scales(conf: Any, name: str) -> None:
    """``name`` is a sequence of positive finite scales."""
    values = getattr(conf, name)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        fail(conf, name, "positive scales")


def threads(conf: Any) -> None:
    """``num_threads`` is >= 0 (0: the runtime's default)."""
    at_least(conf, 0, "num_threads")


def confidence_or_off(conf: Any, *names: str) -> None:
    """Each of ``names`` is in ``(0, 1]``, or ``-1`` (off), as LightGlue's early-stopping confidences."""
    for name in names:
        value = _number(conf, name)
        if value is not None and value != -1 and not 0 < value <= 1:
            fail(conf, name, "a value in (0, 1], or -1 (off)")
