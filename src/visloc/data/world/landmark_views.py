"""Views of the city's landmarks: which places make a landmark, where a camera looks at it, what it covers.

A *landmark* is a City landmark class (``Place.landmark_id >= 0``) made of facades: a facade, or a group of
adjacent facades of one building style; its places all lie in one block, so in one split. Boards and closing
walls carry landmark ids too but are no classes here (a 1.4 m board is never a photo's main subject from the
street; closing walls end streets at district borders); in views they count as other landmarks.

One view of a landmark (:func:`sample_view`, all draws from the given generator): a target point on one of its
facades (a random facade of the group, up to ``target_spread`` of its half-width / half-height off the
centre, at least 1 m above the ground); a camera on the street in front of it, ``angle_deg`` off the facade
normal horizontally and ``distance_m`` from the target horizontally, capped so that the camera stays between
the facade and the facade line across the street (``street width - 0.5 m``, measured along the normal); at
``height_m`` above the ground, looking at the target (level roll, :func:`city_views.look_at`), the target
lowered if need be (not below 1 m) so that the camera looks up by at most ``max_pitch_deg``. With probability
``occluder_prob`` a board stands between camera and target (a copy of one of the split's boards, so the
place-id buffer shows a place of the split): ``occluder_at`` of the way from the camera, up to 1 m to the side,
``occluder_size_m`` wide and high, standing on the ground and facing the camera. It is rendered on its own
and composited by depth (:func:`composite`), so the city itself is never copied.

Coverage (:func:`coverage`, from the place-id buffer): ``fraction`` = pixels of the landmark's places / all
pixels; ``share`` = pixels of the landmark / pixels of every landmark in the view (so a view whose main
subject is another landmark has a small share).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from visloc.conf import ConfError
from visloc.data.scene.places import Place, Split
from visloc.data.scene.render import Frame, render
from visloc.io.poses import CameraPose

_UP = np.array([0.0, 0.0, 1.0])


def _check_pair(conf: Any, field: str, lo: float, hi: float) -> None:
    pair = getattr(conf, field)
    if not (len(pair) == 2 and lo <= pair[0] <= pair[1] <= hi):
        raise ConfError(f"ViewConf.{field}: must be (min, max) with {lo} <= min <= max <= {hi}, got {pair!r}")


@dataclass(frozen=True)
class ViewConf:
    """Where cameras stand to look at a landmark (module docstring); angles in degrees, lengths in metres.

    Attributes:
        distance_m: (min, max) horizontal distance from the camera to the target point.
        angle_deg: largest horizontal angle between the facade normal and the direction to the camera.
        height_m: (min, max) camera height above the ground.
        max_pitch_deg: the target is lowered (down to 1 m above the ground) so that the camera looks up by at
            most this much.
        target_spread: how far off the facade centre the target may lie (share of half-width / half-height).
        occluder_prob: chance that a board stands between camera and target.
        occluder_at: (min, max) share of the camera-target distance at which the board stands.
        occluder_size_m: (min, max) width and height of the board.
    """

    distance_m: tuple[float, float] = (5.0, 30.0)
    angle_deg: float = 55.0
    height_m: tuple[float, float] = (1.2, 4.0)
    max_pitch_deg: float = 25.0
    target_spread: float = 0.5
    occluder_prob: float = 0.2
    occluder_at: tuple[float, float] = (0.3, 0.7)
    occluder_size_m: tuple[float, float] = (1.5, 3.5)

    def __post_init__(self) -> None:
        _check_pair(self, "distance_m", 0.5, 500.0)
        _check_pair(self, "height_m", 0.2, 100.0)
        _check_pair(self, "occluder_at", 0.05, 0.95)
        _check_pair(self, "occluder_size_m", 0.1, 50.0)
        for f, hi in (("angle_deg", 85.0), ("max_pitch_deg", 80.0), ("target_spread", 1.0), ("occluder_prob", 1.0)):
            if not 0.0 <= getattr(self, f) <= hi:
                raise ConfError(f"ViewConf.{f}: must be in [0, {hi}], got {getattr(self, f)!r}")


@dataclass(frozen=True)
class Landmark:
    """A landmark class: its id, its places (facade ids), its split."""

    id: int
    places: tuple[int, ...]
    split: Split


def landmarks_of(city: Any, split: Split, kinds: tuple[str, ...] = ("facade",)) -> list[Landmark]:
    """The landmarks of ``split`` whose places are all of ``kinds``, by increasing id.

    Raises:
        ValueError: a landmark has places in two splits (the city breaks its contract).
    """
    groups: dict[int, list[Place]] = {}
    for p in city.places:
        if p.landmark_id >= 0:
            groups.setdefault(p.landmark_id, []).append(p)
    out = []
    for lid in sorted(groups):
        splits = {p.split for p in groups[lid]}
        if len(splits) != 1:
            raise ValueError(f"landmark {lid} has places in several splits {sorted(splits)}")
        if splits == {split} and all(p.kind in kinds for p in groups[lid]):
            out.append(Landmark(lid, tuple(p.id for p in groups[lid]), split))
    return out


def landmark_lookup(city: Any) -> np.ndarray:
    """int64 ``[P + 1]``: ``lookup[place_id + 1]`` is the place's landmark id (-1 for none and for the sky)."""
    return np.array([-1] + [p.landmark_id for p in city.places], dtype=np.int64)


@dataclass(frozen=True)
class Coverage:
    """What a view shows of a landmark: ``fraction`` of the image, ``share`` of all landmark pixels, ``pixels``."""

    fraction: float
    share: float
    pixels: int


def coverage(place_id: np.ndarray, lookup: np.ndarray, landmark_id: int) -> Coverage:
    """:class:`Coverage` of ``landmark_id`` in a place-id buffer ``[H, W]`` (-1 = sky)."""
    lm = lookup[place_id.astype(np.int64) + 1]
    pixels = int((lm == landmark_id).sum())
    any_landmark = int((lm >= 0).sum())
    return Coverage(pixels / lm.size, pixels / any_landmark if any_landmark else 0.0, pixels)


@dataclass(frozen=True, eq=False)
class ViewSpec:
    """One drawn view.

    Attributes:
        pose: ``cam_from_world``.
        target: [3] world point the camera looks at (metres).
        distance_m: horizontal camera-target distance.
        angle_deg: horizontal angle between the facade normal and the direction to the camera (>= 0).
        height_m: camera height above the ground.
        occluder: the occluding board (a plane), or None.
    """

    pose: CameraPose
    target: np.ndarray
    distance_m: float
    angle_deg: float
    height_m: float
    occluder: Any | None


def _horizontal(v: Any) -> np.ndarray:
    out = np.array([float(v[0]), float(v[1]), 0.0])
    return out / max(float(np.linalg.norm(out)), 1e-12)


def sample_view(city: Any, landmark: Landmark, rng: np.random.Generator, conf: ViewConf,
                boards: tuple[Any, ...]) -> ViewSpec:
    """Draw one view of ``landmark`` (module docstring); ``boards``: board planes of the split for occluders."""
    from visloc.data.scene.city_views import look_at

    place = city.places[landmark.places[int(rng.integers(len(landmark.places)))]]
    n = _horizontal(place.normal)
    u = np.cross(_UP, n)
    w, h = place.size_m
    c = np.asarray(place.center, dtype=np.float64)
    s, t = rng.uniform(-1, 1, 2) * conf.target_spread
    target = c + u * s * w / 2 + _UP * t * h / 2
    angle = float(rng.uniform(-conf.angle_deg, conf.angle_deg))
    a = np.radians(angle)
    street_w = city.streets[place.street_id].width_m if place.street_id >= 0 else conf.distance_m[1]
    d_max = min(conf.distance_m[1], max(street_w - 0.5, 0.5) / max(np.cos(a), 1e-3))
    dist = float(rng.uniform(min(conf.distance_m[0], d_max), d_max))
    height = float(rng.uniform(*conf.height_m))
    direction = np.cos(a) * n + np.sin(a) * u
    center = np.array([target[0], target[1], 0.0]) + dist * direction
    center[2] = height
    target[2] = max(1.0, min(float(target[2]), height + dist * np.tan(np.radians(conf.max_pitch_deg))))
    pose = look_at(center, target)
    occluder = None
    if boards and rng.random() < conf.occluder_prob:
        occluder = _occluder(rng, conf, boards, center, target)
    return ViewSpec(pose, target, dist, abs(angle), height, occluder)


def _occluder(rng: np.random.Generator, conf: ViewConf, boards: tuple[Any, ...], center: np.ndarray,
              target: np.ndarray) -> Any:
    board = boards[int(rng.integers(len(boards)))]
    f = rng.uniform(*conf.occluder_at)
    toward = _horizontal(target - center)  # the board faces the camera
    side = np.cross(_UP, toward)
    foot = center + f * (target - center)
    foot = np.array([foot[0], foot[1], 0.0]) + side * rng.uniform(-1.0, 1.0)
    bw, bh = rng.uniform(*conf.occluder_size_m, 2)
    origin = foot - side * bw / 2 + _UP * bh  # top-left corner; u = side, v = down: normal u x v = -toward
    return dataclasses.replace(board, name=f"occluder_{board.name}", origin=origin, u=side, v=-_UP,
                               size_m=(float(bw), float(bh)))


@dataclass(frozen=True, eq=False)
class _Props:
    """A world of props (the occluder) rendered beside the city: the city's conf, a few planes."""

    conf: Any
    planes: tuple[Any, ...]


def composite(frame: Frame, city: Any, occluder: Any | None) -> Frame:
    """``frame`` with ``occluder`` (a plane) drawn over what it hides, by depth.

    Where the occluder shows, ``plane_index`` is -2 (a prop, not one of ``city.planes``) and ``place_id`` is the
    occluder's (the board it copies).
    """
    if occluder is None:
        return frame
    props = render(_Props(city.conf, (occluder,)), frame.K, frame.pose, size=(frame.image.shape[1],
                                                                                frame.image.shape[0]))
    front = props.depth < frame.depth
    if not front.any():
        return frame
    image, depth = frame.image.copy(), frame.depth.copy()
    plane_index, place_id = frame.plane_index.copy(), frame.place_id.copy()
    image[front], depth[front] = props.image[front], props.depth[front]
    plane_index[front], place_id[front] = -2, props.place_id[front]
    return dataclasses.replace(frame, image=image, depth=depth, plane_index=plane_index, place_id=place_id)
