"""Street views of the city: camera poses on the streets of a split, and checks of what a view shows.

Poses are ``cam_from_world`` with OpenCV camera axes (x right, y down, z forward) in the city frame (metres,
x east, y north, z up). Yaw is the heading in the ground plane, counter-clockwise from east; pitch is positive
looking up; roll is always 0 (level cameras).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from visloc.data.scene.places import SPLITS, Split, Street
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City

#: the least distance kept between a camera and a facade line (metres)
_WALL_MARGIN = 3.0
#: the least distance kept between a camera and the end of its street segment (metres)
_END_MARGIN = 1.0


def look_at(center: object, target: object) -> CameraPose:
    """The level-roll camera at ``center`` [3] looking at ``target`` [3] (world, metres).

    Raises:
        ValueError: ``target`` is (almost) straight above or below ``center``, or equal to it.
    """
    c = np.asarray(center, dtype=np.float64).reshape(3)
    f = np.asarray(target, dtype=np.float64).reshape(3) - c
    norm = np.linalg.norm(f)
    if norm < 1e-9:
        raise ValueError("look_at: target equals center")
    f = f / norm
    right = np.cross(f, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("look_at: cannot keep the roll level looking straight up or down")
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    R = np.stack([right, down, f])
    return CameraPose(R, -R @ c)


def heading_pose(center: object, yaw_deg: float, pitch_deg: float = 0.0) -> CameraPose:
    """The level camera at ``center`` [3] with heading ``yaw_deg`` (from east, counter-clockwise) and pitch."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    if abs(pitch) >= np.pi / 2 - 1e-6:
        raise ValueError(f"heading_pose: pitch_deg must be in (-90, 90), got {pitch_deg}")
    c = np.asarray(center, dtype=np.float64).reshape(3)
    return look_at(c, c + np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)]))


def street_point(street: Street, along: float, lateral: float) -> np.ndarray:
    """[2] the ground point ``along`` metres from the segment's start, ``lateral`` metres left of its centre line."""
    start, end = np.asarray(street.start), np.asarray(street.end)
    d = (end - start) / np.linalg.norm(end - start)
    return start + along * d + lateral * np.array([-d[1], d[0]])


def sample_street_pose(city: City, rng: np.random.Generator, split: Split, *, lateral_m: float = 2.0,
                       yaw_deg: float = 180.0, pitch_deg: float = 5.0, height_m: float = 0.3,
                       street_id: int | None = None) -> tuple[CameraPose, int]:
    """A random camera on a street segment of ``split`` (or on ``street_id``, which must be of ``split``).

    The position is uniform along the segment (1 m from its ends), within ``lateral_m`` of its centre line (kept
    3 m from the facade lines), at ``eye_height_m +- height_m``; the heading is the street's direction, either
    way, turned by up to ``+-yaw_deg``; the pitch is uniform in ``+-pitch_deg``.

    Returns:
        ``(cam_from_world, street id)``.
    """
    if split not in SPLITS:
        raise ValueError(f"sample_street_pose: split must be one of {SPLITS}, got {split!r}")
    if min(lateral_m, yaw_deg, pitch_deg, height_m) < 0 or pitch_deg >= 90:
        raise ValueError(f"sample_street_pose: offsets must be >= 0 (pitch_deg < 90), got lateral_m={lateral_m}, "
                         f"yaw_deg={yaw_deg}, pitch_deg={pitch_deg}, height_m={height_m}")
    if street_id is None:
        streets = city.streets_of(split)
        if not streets:
            raise ValueError(f"sample_street_pose: the city has no street of split {split!r}")
        street = streets[int(rng.integers(len(streets)))]
    else:
        if not 0 <= street_id < len(city.streets) or city.streets[street_id].split != split:
            raise ValueError(f"sample_street_pose: street_id {street_id} is not a street of split {split!r}")
        street = city.streets[street_id]
    length = float(np.hypot(street.end[0] - street.start[0], street.end[1] - street.start[1]))
    margin = min(_END_MARGIN, length / 4)
    lat = min(lateral_m, max(0.0, street.width_m / 2 - _WALL_MARGIN))
    xy = street_point(street, rng.uniform(margin, length - margin), rng.uniform(-lat, lat))
    z = city.conf.eye_height_m + rng.uniform(-height_m, height_m)
    heading = np.degrees(np.arctan2(street.end[1] - street.start[1], street.end[0] - street.start[0]))
    heading += 180.0 * int(rng.integers(2)) + rng.uniform(-yaw_deg, yaw_deg)
    pose = heading_pose((xy[0], xy[1], z), heading, rng.uniform(-pitch_deg, pitch_deg))
    return pose, street.id


def foreign_fraction(place_id_img: np.ndarray, city: City, split: Split) -> float:
    """Share of the non-sky pixels of a place-id image ``[H, W]`` (int, -1 = sky) showing a place not of ``split``.

    0.0 when the image shows only sky.
    """
    if split not in SPLITS:
        raise ValueError(f"foreign_fraction: split must be one of {SPLITS}, got {split!r}")
    ids = np.asarray(place_id_img)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"foreign_fraction: expected an integer image [H, W], got {ids.dtype} {ids.shape}")
    seen = ids[ids >= 0]
    if seen.size == 0:
        return 0.0
    if int(seen.max()) >= len(city.places):
        raise ValueError(f"foreign_fraction: place id {int(seen.max())} >= {len(city.places)} places")
    splits = city.place_split()
    return float(np.count_nonzero(splits[seen] != SPLITS.index(split)) / seen.size)


def visible_places(place_id_img: np.ndarray) -> dict[int, int]:
    """Place id -> pixel count of a place-id image ``[H, W]`` (sky, -1, left out)."""
    ids = np.asarray(place_id_img)
    values, counts = np.unique(ids[ids >= 0], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
