"""The demo's world: database walks and offset queries on the streets of one split of the procedural city.

By default the world is the test split of the default city (``CityConf()``): its three test blocks on the
city's east edge and the six street segments between them (three east-west of about 90 m, three north-south of
about 60 m; about 450 m of street). Those places are in no training set of the data engine (the ``distill``,
``landmarks``, ``pairs`` and ``drive`` generators draw train views from the train split), so a model trained on
the engine's train split meets the demo's places for the first time.

Database: every street segment of the split (or ``streets``) is walked along its centre line, in both directions
(``db_both_ways``), with a stop every ``db_spacing_m`` metres and one level frame per heading of ``db_yaws_deg``
(relative to the walking direction, + to the left). Queries stand at random points of the walked segments,
moved by ``offsets`` (larger than the old street's), look along a random walked direction and database heading
turned by the yaw / pitch offsets, and get the conditions ``query_conditions`` in turn (names of
:func:`~visloc.data.scene.condition_conf.parse_condition`: ``day``, ``night``, ``fog``, ``blur``,
``night+fog``...). A view that shows another split's places (more than ``max_foreign`` of its non-sky pixels),
or that one place fills (more than ``max_place_share`` of the image: a closing wall at a street's end straight
ahead) is left out (a database frame) or drawn again (a query).

Poses are ``cam_from_world`` (OpenCV camera axes) in the city frame: metres, x east, y north, z up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from visloc.conf import ConfError, apply_overrides, load_conf, load_yaml
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.config import OffsetConf
from visloc.data.scene.places import SPLITS, Split, Street
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City

#: the least distance kept between a camera and a facade line (metres), as ``city_views``
_WALL_MARGIN = 3.0


def _check(ok: bool, where: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"{where}: {problem}, got {value!r}")


@dataclass(frozen=True)
class ViewOffsetConf(OffsetConf):
    """The demo's query offsets: :class:`OffsetConf` with larger defaults, errors named ``CitySceneConf.offsets``.

    The camera stays 3 m from the facade lines whatever ``lateral_m``.
    """

    along_m: float = 3.0
    lateral_m: float = 2.0
    height_m: float = 0.4
    yaw_deg: float = 20.0
    pitch_deg: float = 5.0
    where: ClassVar[str] = "CitySceneConf.offsets"


@dataclass(frozen=True)
class CitySceneConf:
    """The demo's city world: which streets are walked, how densely, and the queries' offsets and conditions.

    Attributes:
        city: the city (its camera ``width`` / ``height`` / ``focal`` / ``eye_height_m`` are the scene's).
        split: the split whose streets are walked (``test``: places no training set of the engine holds).
        streets: ids of the street segments walked, all of ``split``; empty: every street segment of ``split``.
        db_spacing_m: distance between two database stops along a street (metres).
        db_yaws_deg: headings taken at each stop, relative to the walking direction (degrees, + to the left).
        db_both_ways: walk every street in both directions (else from its start to its end only).
        num_queries: number of query frames.
        query_conditions: condition names given to the queries in turn (query i gets ``[i % len]``).
        offsets: viewpoint offsets of the queries.
        max_foreign: largest share of a view's non-sky pixels that may show another split's places.
        max_place_share: largest share of a view's pixels that one place may fill.
    """

    city: CityConf = field(default_factory=CityConf)
    split: Split = "test"
    streets: tuple[int, ...] = ()
    db_spacing_m: float = 15.0
    db_yaws_deg: tuple[float, ...] = (35.0, 0.0, -35.0)
    db_both_ways: bool = True
    num_queries: int = 48
    query_conditions: tuple[str, ...] = ("day", "night", "fog", "blur")
    offsets: ViewOffsetConf = field(default_factory=ViewOffsetConf)
    max_foreign: float = 0.0
    max_place_share: float = 0.6

    def __post_init__(self) -> None:
        from visloc.data.scene.condition_conf import parse_condition

        w = "CitySceneConf"
        _check(self.split in SPLITS, f"{w}.split", f"must be one of {SPLITS}", self.split)
        _check(all(isinstance(s, int) and s >= 0 for s in self.streets), f"{w}.streets",
               "must be street ids >= 0", self.streets)
        _check(1.0 <= self.db_spacing_m <= 1000.0, f"{w}.db_spacing_m", "must be in [1, 1000]", self.db_spacing_m)
        _check(len(self.db_yaws_deg) >= 1 and all(abs(y) <= 90.0 for y in self.db_yaws_deg), f"{w}.db_yaws_deg",
               "must be one or more headings in [-90, 90]", self.db_yaws_deg)
        _check(self.num_queries >= 0, f"{w}.num_queries", "must be >= 0", self.num_queries)
        _check(len(self.query_conditions) >= 1, f"{w}.query_conditions", "must name one or more conditions",
               self.query_conditions)
        for name in self.query_conditions:
            try:
                parse_condition(name)
            except ValueError as e:
                raise ConfError(f"{w}.query_conditions: {e}") from None
        _check(0.0 <= self.max_foreign <= 1.0, f"{w}.max_foreign", "must be in [0, 1]", self.max_foreign)
        _check(0.0 < self.max_place_share <= 1.0, f"{w}.max_place_share", "must be in (0, 1]",
               self.max_place_share)


def usable_view(place_id: np.ndarray, city: City, conf: CitySceneConf) -> bool:
    """Whether a rendered place-id image ``[H, W]`` (-1 = sky) may join the scene (see the module docstring)."""
    from visloc.data.scene.city_views import foreign_fraction

    if foreign_fraction(place_id, city, conf.split) > conf.max_foreign:
        return False
    seen = place_id[place_id >= 0]
    return seen.size == 0 or int(np.bincount(seen).max()) <= conf.max_place_share * place_id.size


def load_city_scene_conf(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CitySceneConf:
    """A ``CitySceneConf`` from a YAML file (flat, or ``name: city_scene`` + ``conf:``) and ``key=value`` overrides.

    Unknown keys and wrong types raise ``ConfError`` (a ``ValueError``) naming the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        if "conf" in data and set(data) <= {"name", "conf"}:
            data = dict(data["conf"] or {})
    conf = load_conf(CitySceneConf, data, where=str(path) if path is not None else "CitySceneConf")
    return apply_overrides(conf, list(overrides)) if overrides else conf


def walked_streets(city: City, conf: CitySceneConf) -> tuple[Street, ...]:
    """The street segments of ``conf`` (checked to be of its split), in id order."""
    if not conf.streets:
        streets = city.streets_of(conf.split)
        if not streets:
            raise ConfError(f"CitySceneConf.split: the city has no street segment of split {conf.split!r}")
        return streets
    for sid in conf.streets:
        ok = sid < len(city.streets) and city.streets[sid].split == conf.split
        _check(ok, "CitySceneConf.streets", f"must be street ids of split {conf.split!r}", conf.streets)
    return tuple(city.streets[s] for s in sorted(set(conf.streets)))


def _frame(street: Street) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Start [2], unit direction [2], length and heading (degrees from east) of a street's centre line."""
    start, end = np.asarray(street.start, np.float64), np.asarray(street.end, np.float64)
    length = float(np.linalg.norm(end - start))
    d = (end - start) / length
    return start, d, length, float(np.degrees(np.arctan2(d[1], d[0])))


def _directions(conf: CitySceneConf) -> tuple[float, ...]:
    return (0.0, 180.0) if conf.db_both_ways else (0.0,)


def db_views(city: City, conf: CitySceneConf) -> Iterator[tuple[CameraPose, int]]:
    """Candidate database poses and their street ids, street by street, stop by stop, heading by heading.

    Stops are evenly spaced along each centre line (``db_spacing_m`` apart at most, 1 m from the segment's
    ends), at eye height, with level cameras.
    """
    from visloc.data.scene.city_views import heading_pose

    eye = city.conf.eye_height_m
    for street in walked_streets(city, conf):
        start, d, length, heading = _frame(street)
        margin = min(1.0, length / 4)
        stops = max(2, int(np.ceil((length - 2 * margin) / conf.db_spacing_m)) + 1)
        for way in _directions(conf):
            alongs = np.linspace(margin, length - margin, stops)
            for along in alongs if way == 0.0 else alongs[::-1]:
                xy = start + along * d
                for yaw in conf.db_yaws_deg:
                    yield heading_pose((xy[0], xy[1], eye), heading + way + yaw), street.id


def query_view(city: City, conf: CitySceneConf, rng: np.random.Generator) -> tuple[CameraPose, int]:
    """One random query pose (and its street id): a walked point, direction and heading, moved by the offsets."""
    from visloc.data.scene.city_views import heading_pose

    streets = walked_streets(city, conf)
    lengths = np.array([_frame(s)[2] for s in streets])
    street = streets[int(rng.choice(len(streets), p=lengths / lengths.sum()))]
    start, d, length, heading = _frame(street)
    o = conf.offsets
    margin = min(1.0, length / 4)
    along = float(np.clip(rng.uniform(margin, length - margin) + rng.uniform(-o.along_m, o.along_m), 0.0, length))
    lat_max = min(o.lateral_m, max(0.0, street.width_m / 2 - _WALL_MARGIN))
    xy = start + along * d + rng.uniform(-lat_max, lat_max) * np.array([-d[1], d[0]])
    z = city.conf.eye_height_m + rng.uniform(-o.height_m, o.height_m)
    way = _directions(conf)[int(rng.integers(len(_directions(conf))))]
    yaw = conf.db_yaws_deg[int(rng.integers(len(conf.db_yaws_deg)))] + rng.uniform(-o.yaw_deg, o.yaw_deg)
    pose = heading_pose((xy[0], xy[1], z), heading + way + yaw, rng.uniform(-o.pitch_deg, o.pitch_deg))
    return pose, street.id
