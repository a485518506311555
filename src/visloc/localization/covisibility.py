"""Which database images see the same place: covisibility clusters and pairs from known poses.

``covisibility_clusters`` is HF-Net's (Sarlin et al. 2019) grouping of the retrieved database
images: two retrieved images are connected when they observe at least ``min_shared`` common 3D
points, and each connected component is a *place*. A query is then localized against one place at
a time, largest first, so that retrieved images of a wrong but similar-looking place do not pollute
the 2D-3D matches of the right one.

``pairs_from_poses`` chooses image pairs to match when the poses are known: the nearest cameras
(centre distance) whose viewing directions differ by less than ``max_angle`` degrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from visloc.io.poses import CameraPose

if TYPE_CHECKING:  # only the type; callers hand in their reconstruction
    import pycolmap


def covisibility_clusters(retrieved: Sequence[int], observations: Mapping[int, set[int] | frozenset[int]],
                          min_shared: int = 1) -> list[list[int]]:
    """Group retrieved images into places by shared 3D points.

    Args:
        retrieved: database image ids, best retrieval rank first.
        observations: ``{image id: ids of the 3D points it observes}``; a missing id observes nothing.
        min_shared: common 3D points needed to connect two images.

    Returns:
        The places, each a list of image ids in retrieval order; places are sorted by size (largest
        first), ties by their best retrieval rank.
    """
    if min_shared < 1:
        raise ValueError(f"min_shared must be >= 1, got {min_shared}")
    ids = list(dict.fromkeys(retrieved))  # unique, rank order kept
    rank = {i: r for r, i in enumerate(ids)}
    seen: set[int] = set()
    clusters: list[list[int]] = []
    for start in ids:
        if start in seen:
            continue
        seen.add(start)
        component, stack = [start], [start]
        while stack:
            current = observations.get(stack.pop(), frozenset())
            for other in ids:
                if other not in seen and len(current & observations.get(other, frozenset())) >= min_shared:
                    seen.add(other)
                    component.append(other)
                    stack.append(other)
        clusters.append(sorted(component, key=rank.__getitem__))
    return sorted(clusters, key=lambda c: (-len(c), rank[c[0]]))


def reconstruction_observations(rec: pycolmap.Reconstruction, image_ids: Sequence[int]) -> dict[int, frozenset[int]]:
    """``{image id: 3D point ids it observes}`` for the given registered images of a ``pycolmap.Reconstruction``."""
    out: dict[int, frozenset[int]] = {}
    for image_id in image_ids:
        image = rec.images[image_id]
        out[image_id] = frozenset(p.point3D_id for p in image.points2D if p.has_point3D())
    return out


def pairs_from_poses(poses: Mapping[str, CameraPose], num_neighbors: int = 5,
                     max_angle: float = 60.0) -> list[tuple[str, str]]:
    """Each image with its ``num_neighbors`` nearest cameras looking within ``max_angle`` degrees of it.

    Args:
        poses: ``{name: cam_from_world}``.
        num_neighbors: neighbours per image (a pair found from both sides is listed once).
        max_angle: largest angle between the optical axes (third row of ``R``), degrees.

    Returns:
        Unordered pairs ``(name0, name1)`` with ``name0`` before ``name1`` in ``poses``' order.
    """
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    names = list(poses)
    if len(names) < 2:
        return []
    centers = np.stack([poses[n].center for n in names])
    axes = np.stack([poses[n].R[2] for n in names])  # viewing direction in world coordinates
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cos = np.clip(axes @ axes.T, -1.0, 1.0)
    dist[cos < np.cos(np.deg2rad(max_angle))] = np.inf
    np.fill_diagonal(dist, np.inf)
    found: set[tuple[int, int]] = set()
    for i in range(len(names)):
        for j in np.argsort(dist[i], kind="stable")[:num_neighbors]:
            if np.isfinite(dist[i, j]):
                found.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(found)]
