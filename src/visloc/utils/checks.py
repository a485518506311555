"""Argument checks shared by the geometry, data and metric code (they raise, never assert)."""

from __future__ import annotations

import numpy as np


def matched_keypoints(kpts0: object, kpts1: object) -> tuple[np.ndarray, np.ndarray]:
    """Both ``[N, 2]`` float64 with the same ``N``; ``ValueError`` naming the argument otherwise."""
    a, b = np.asarray(kpts0, np.float64), np.asarray(kpts1, np.float64)
    for name, k in (("kpts0", a), ("kpts1", b)):
        if k.ndim != 2 or k.shape[1] != 2:
            raise ValueError(f"{name} must have shape [N, 2], got {list(k.shape)}")
    if len(a) != len(b):
        raise ValueError(f"kpts0 and kpts1 must have the same length, got {len(a)} and {len(b)}")
    return a, b
