"""The configuration of the ``drive`` generator: the route, the traversals, rates, camera, budgets, GPS origin."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from visloc.conf import ConfError
from visloc.data.scene.city_conf import CityConf
from visloc.data.world.trajectory import VehicleConf

#: the highest pose rate (simulated time)
MAX_POSE_HZ = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TraversalConf:
    """One drive along the route (one folder of the dataset).

    Attributes:
        name: folder name (letters, digits, ``_``, ``-``), unique among the traversals.
        condition: a condition name for :func:`visloc.data.scene.conditions.parse_condition` (``day``,
            ``night``, ``dusk+rain``, ``winter+night`` ...); its season also selects the city's textures.
        lateral_offset_m: constant lateral offset from the home lane's centre (metres, > 0 to the left).
        speed_scale: multiplies the vehicle's ``max_speed_mps`` for this traversal (in (0, 2]).
    """

    name: str = "day1"
    condition: str = "day"
    lateral_offset_m: float = 0.0
    speed_scale: float = 1.0


def _default_traversals() -> tuple[TraversalConf, ...]:
    return (TraversalConf("day1", "day", 0.0, 1.0), TraversalConf("day2", "day", 0.6, 0.85),
            TraversalConf("night1", "night", -0.4, 1.0))


@dataclass(frozen=True)
class DriveConf:
    """Conf of :func:`visloc.data.world.drive.generate_drive`.

    Attributes:
        city: the city (its ``seed`` is the world seed).
        route_length_m: length of the route's walk through the street graph (metres; a shorter route is used
            when the split's streets allow no longer walk).
        turn_radius_m: radius of the centre line's arc at each turn (metres).
        route_tries: candidate routes; the first whose views show no place of another split is taken (else the
            one with the fewest such views, whose frames showing them are not written).
        traversals: the drives along the route (conditions, offsets, speeds).
        vehicle: motion limits, stops, lanes and the camera mount.
        pose_hz: pose rate in simulated time (1 .. 1000 Hz), written to ``poses.csv``.
        render_hz: rate of the rendered frames; must divide ``pose_hz`` (a frame every ``pose_hz / render_hz``
            poses).
        width, height, focal: the camera (pixels; default: DAVIS-like 346 x 260, about the city camera's
            field of view).
        max_frames: most rendered frames over all traversals; ``max_poses``: most pose rows.
        origin_lat_deg, origin_lon_deg, origin_height_m: WGS84 point of the world origin (the default is in
            Philadelphia, where MVSEC was recorded; any point between 80 S and 84 N works).
    """

    city: CityConf = field(default_factory=CityConf)
    route_length_m: float = 300.0
    turn_radius_m: float = 6.0
    route_tries: int = 6
    traversals: tuple[TraversalConf, ...] = field(default_factory=_default_traversals)
    vehicle: VehicleConf = field(default_factory=VehicleConf)
    pose_hz: int = 1000
    render_hz: int = 10
    width: int = 346
    height: int = 260
    focal: float = 270.0
    max_frames: int = 5000
    max_poses: int = 2_000_000
    origin_lat_deg: float = 39.9522
    origin_lon_deg: float = -75.1932
    origin_height_m: float = 10.0

    def __post_init__(self) -> None:
        _check(self.route_length_m >= 20, "route_length_m", "must be >= 20", self.route_length_m)
        _check(self.turn_radius_m > 0, "turn_radius_m", "must be > 0", self.turn_radius_m)
        _check(self.route_tries >= 1, "route_tries", "must be >= 1", self.route_tries)
        _check(1 <= self.pose_hz <= MAX_POSE_HZ, "pose_hz", f"must be in [1, {MAX_POSE_HZ}]", self.pose_hz)
        _check(self.render_hz >= 1 and self.pose_hz % self.render_hz == 0, "render_hz",
               f"must be >= 1 and divide pose_hz = {self.pose_hz}", self.render_hz)
        _check(self.width >= 32 and self.height >= 32, "width" if self.width < 32 else "height",
               "the image must be at least 32 x 32 pixels", (self.width, self.height))
        _check(self.focal > 0, "focal", "must be > 0", self.focal)
        _check(self.max_frames >= 1, "max_frames", "must be >= 1", self.max_frames)
        _check(self.max_poses >= 1, "max_poses", "must be >= 1", self.max_poses)
        _check(-80 <= self.origin_lat_deg <= 84, "origin_lat_deg", "must be in [-80, 84] (UTM)", self.origin_lat_deg)
        _check(-180 <= self.origin_lon_deg < 180, "origin_lon_deg", "must be in [-180, 180)", self.origin_lon_deg)
        self._check_traversals()

    def _check_traversals(self) -> None:
        from visloc.data.scene.conditions import parse_condition

        _check(len(self.traversals) >= 1, "traversals", "needs at least one traversal", len(self.traversals))
        names = [t.name for t in self.traversals]
        for i, t in enumerate(self.traversals):
            where = f"traversals[{i}]"
            _check(bool(_NAME.match(t.name)), f"{where}.name", "must be letters, digits, '_' or '-'", t.name)
            _check(t.name not in names[:i], f"{where}.name", "must be unique", t.name)
            _check(0 < t.speed_scale <= 2, f"{where}.speed_scale", "must be in (0, 2]", t.speed_scale)
            _check(abs(t.lateral_offset_m) < self.turn_radius_m, f"{where}.lateral_offset_m",
                   f"must be smaller than turn_radius_m = {self.turn_radius_m} in size", t.lateral_offset_m)
            try:
                parse_condition(t.condition)
            except ValueError as e:
                raise ConfError(f"DriveConf.{where}.condition: {e}, got {t.condition!r}") from None


def _check(ok: bool, name: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"DriveConf.{name}: {problem}, got {value!r}")
