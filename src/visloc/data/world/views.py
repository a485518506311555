"""One view of the city for a dataset: render, refuse it when it shows another split, apply a condition.

Every generator goes through :func:`render_clean` and :func:`condition_image`, so the split rule (a view of
split S shows no place of another split, up to ``max_foreign`` of its non-sky pixels) and the order
render -> condition are the same for every kind of dataset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from visloc.data.scene.places import Split
from visloc.data.scene.render import Frame, intrinsics, render
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City


def camera_matrix(city: City, size: tuple[int, int] | None = None, focal: float | None = None) -> np.ndarray:
    """[3, 3] ``K`` of the city's default camera, or of ``size`` (W, H) / ``focal`` when given."""
    w, h = size if size is not None else (city.conf.width, city.conf.height)
    return intrinsics(city.conf.focal if focal is None else focal, w, h)


def render_clean(city: City, pose: CameraPose, split: Split, *, K: np.ndarray | None = None,
                 size: tuple[int, int] | None = None, max_foreign: float = 0.0) -> Frame | None:
    """Render ``pose``; None when more than ``max_foreign`` of the non-sky pixels show another split's places.

    Args:
        city: the city.
        pose: ``cam_from_world``.
        split: the split the view is for.
        K: intrinsics; default: :func:`camera_matrix` of ``size``.
        size: (width, height); default: the city conf's.
        max_foreign: tolerated share of foreign pixels (0: none at all).
    """
    from visloc.data.scene.city_views import foreign_fraction

    size = size if size is not None else (city.conf.width, city.conf.height)
    K = camera_matrix(city, size) if K is None else K
    frame = render(city, K, pose, size=size)
    if foreign_fraction(frame.place_id, city, split) > max_foreign:
        return None
    return frame


def condition_image(frame: Frame, condition: Any, rng: np.random.Generator) -> np.ndarray:
    """The frame's image with ``condition`` (a ``ConditionConf`` or its name, e.g. ``night+fog``), uint8 RGB."""
    from visloc.data.scene.conditions import apply_conditions, parse_condition

    cond = parse_condition(condition) if isinstance(condition, str) else condition
    out = apply_conditions(frame.image_float, cond, rng, frame.depth)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
