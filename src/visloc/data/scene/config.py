"""Typed, frozen configuration of the built-in rendered scene.

Every check raises ``ConfError("SceneConf.<field>: <problem>")`` (a ``ValueError``) so a bad value is named, whether it
came from Python, a YAML file (``configs/scene_default.yaml``) or a CLI ``--set`` override.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from visloc.conf import ConfError, apply_overrides, load_conf, load_yaml

Condition = Literal["day", "night", "blur"]
CONDITIONS: tuple[str, ...] = ("day", "night", "blur")


def _check(ok: bool, where: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"{where}: {problem}, got {value!r}")


@dataclass(frozen=True)
class NightConf:
    """Night-like illumination: ``out = gain * tint * light * image ** gamma + N(0, noise_std)``, clipped to [0, 1].

    ``light = ambient + (1 - ambient) / (1 + (depth / falloff_m) ** 2)`` when a depth map is given (light
    carried by the camera fades with distance, the sky gets only the ambient part), else 1.

    Attributes:
        gain: global brightness factor in (0, 1] (low light).
        gamma: exponent > 0 applied to the [0, 1] image; > 1 darkens mid-tones further.
        noise_std: standard deviation of the additive Gaussian sensor noise, in [0, 1] intensity units.
        tint: per-channel (R, G, B) factor of the artificial light.
        falloff_m: distance (metres) at which the carried light has fallen to half; 0 disables the falloff.
        ambient: share of the light that does not fade with distance, in [0, 1].
    """

    gain: float = 0.3
    gamma: float = 1.6
    noise_std: float = 0.025
    tint: tuple[float, ...] = (1.0, 0.9, 0.75)
    falloff_m: float = 12.0
    ambient: float = 0.25

    def __post_init__(self) -> None:
        _check(0.0 < self.gain <= 1.0, "SceneConf.night.gain", "must be in (0, 1]", self.gain)
        _check(self.gamma > 0.0, "SceneConf.night.gamma", "must be > 0", self.gamma)
        _check(0.0 <= self.noise_std <= 0.5, "SceneConf.night.noise_std", "must be in [0, 0.5]", self.noise_std)
        _check(len(self.tint) == 3 and all(0.0 < c <= 2.0 for c in self.tint), "SceneConf.night.tint",
               "must be 3 factors in (0, 2]", self.tint)
        _check(self.falloff_m >= 0.0, "SceneConf.night.falloff_m", "must be >= 0", self.falloff_m)
        _check(0.0 <= self.ambient <= 1.0, "SceneConf.night.ambient", "must be in [0, 1]", self.ambient)


@dataclass(frozen=True)
class BlurConf:
    """Linear motion blur of a random direction plus mild sensor noise.

    Attributes:
        length_px: length of the motion-blur kernel in pixels (>= 1; 1 means no motion blur).
        noise_std: additive Gaussian noise after blurring, in [0, 1] intensity units.
    """

    length_px: float = 9.0
    noise_std: float = 0.005

    def __post_init__(self) -> None:
        _check(1.0 <= self.length_px <= 101.0, "SceneConf.blur.length_px", "must be in [1, 101]", self.length_px)
        _check(0.0 <= self.noise_std <= 0.5, "SceneConf.blur.noise_std", "must be in [0, 0.5]", self.noise_std)


@dataclass(frozen=True)
class OffsetConf:
    """Viewpoint offsets of the queries from the database trajectory: uniform in ``[-x, x]`` for each.

    Attributes:
        along_m: offset along the street (metres).
        lateral_m: offset across the street (metres).
        height_m: offset of the eye height (metres).
        yaw_deg: heading offset (degrees).
        pitch_deg: pitch offset (degrees).
    """

    along_m: float = 1.5
    lateral_m: float = 1.0
    height_m: float = 0.3
    yaw_deg: float = 12.0
    pitch_deg: float = 4.0
    #: the conf path that errors name (a subclass used elsewhere names its own)
    where: ClassVar[str] = "SceneConf.offsets"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check(value >= 0.0, f"{self.where}.{f.name}", "must be >= 0", value)
        _check(self.yaw_deg <= 90.0, f"{self.where}.yaw_deg", "must be <= 90", self.yaw_deg)
        _check(self.pitch_deg <= 45.0, f"{self.where}.pitch_deg", "must be <= 45", self.pitch_deg)


@dataclass(frozen=True)
class SceneConf:
    """The street world, the camera, the trajectories and the query conditions; everything follows ``seed``.

    World frame: metres, x along the street, y to the left when looking down +x, z up; the ground is z = 0.

    Attributes:
        seed: seed of every random choice (textures, building sizes, query offsets, noise).
        width: image width in pixels.
        height: image height in pixels.
        focal: focal length in pixels (fx = fy); the principal point is the image centre.
        street_length_m: length of the walked street (x from 0 to this value).
        street_width_m: distance between the two facade lines (before the random setbacks).
        building_width_m: (min, max) width of a building along the street.
        building_height_m: (min, max) height of a building.
        setback_m: maximum random setback of a facade behind its facade line.
        px_per_m: texture resolution on the facades and the ground (texels per metre).
        num_boards: free-standing double-sided boards along the pavements (parallax, occlusion).
        eye_height_m: camera height above the ground.
        num_db: number of database frames (a multiple of ``len(db_yaws_deg)``).
        db_yaws_deg: headings taken at each database stop (0 = down the street, + = to the left).
        num_queries: number of query frames.
        query_conditions: conditions given to the queries in turn (query i gets ``[i % len]``).
        offsets: viewpoint offsets of the queries.
        night: the night condition.
        blur: the blur condition.
        near_m: near clipping distance of the renderer.
    """

    seed: int = 0
    width: int = 640
    height: int = 480
    focal: float = 500.0
    street_length_m: float = 60.0
    street_width_m: float = 12.0
    building_width_m: tuple[float, ...] = (6.0, 11.0)
    building_height_m: tuple[float, ...] = (7.0, 14.0)
    setback_m: float = 1.5
    px_per_m: float = 40.0
    num_boards: int = 4
    eye_height_m: float = 1.6
    num_db: int = 48
    db_yaws_deg: tuple[float, ...] = (35.0, 0.0, -35.0)
    num_queries: int = 21
    query_conditions: tuple[Condition, ...] = ("day", "night", "blur")
    offsets: OffsetConf = field(default_factory=OffsetConf)
    night: NightConf = field(default_factory=NightConf)
    blur: BlurConf = field(default_factory=BlurConf)
    near_m: float = 0.05

    def __post_init__(self) -> None:
        self._check_camera()
        self._check_world()
        self._check_trajectory()

    def _check_camera(self) -> None:
        _check(16 <= self.width <= 8192, "SceneConf.width", "must be in [16, 8192]", self.width)
        _check(16 <= self.height <= 8192, "SceneConf.height", "must be in [16, 8192]", self.height)
        _check(self.focal > 0.0, "SceneConf.focal", "must be > 0", self.focal)
        _check(self.near_m > 0.0, "SceneConf.near_m", "must be > 0", self.near_m)

    def _check_world(self) -> None:
        _check(self.street_length_m >= 5.0, "SceneConf.street_length_m", "must be >= 5", self.street_length_m)
        _check(self.street_width_m >= 3.0, "SceneConf.street_width_m", "must be >= 3", self.street_width_m)
        for name in ("building_width_m", "building_height_m"):
            lo_hi = getattr(self, name)
            _check(len(lo_hi) == 2 and 1.0 <= lo_hi[0] <= lo_hi[1], f"SceneConf.{name}",
                   "must be (min, max) with 1 <= min <= max", lo_hi)
        _check(self.setback_m >= 0.0, "SceneConf.setback_m", "must be >= 0", self.setback_m)
        _check(4.0 <= self.px_per_m <= 400.0, "SceneConf.px_per_m", "must be in [4, 400]", self.px_per_m)
        _check(self.num_boards >= 0, "SceneConf.num_boards", "must be >= 0", self.num_boards)

    def _check_trajectory(self) -> None:
        _check(0.2 <= self.eye_height_m <= 20.0, "SceneConf.eye_height_m", "must be in [0.2, 20]", self.eye_height_m)
        _check(len(self.db_yaws_deg) >= 1 and all(abs(y) <= 90.0 for y in self.db_yaws_deg),
               "SceneConf.db_yaws_deg", "must be one or more headings in [-90, 90]", self.db_yaws_deg)
        _check(self.num_db >= len(self.db_yaws_deg) and self.num_db % len(self.db_yaws_deg) == 0,
               "SceneConf.num_db", f"must be a positive multiple of len(db_yaws_deg) = {len(self.db_yaws_deg)}",
               self.num_db)
        _check(self.num_queries >= 0, "SceneConf.num_queries", "must be >= 0", self.num_queries)
        _check(len(self.query_conditions) >= 1 and all(c in CONDITIONS for c in self.query_conditions),
               "SceneConf.query_conditions", f"must be one or more of {CONDITIONS}", self.query_conditions)


def load_scene_conf(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SceneConf:
    """A ``SceneConf`` from a YAML file (flat, or ``name: scene`` + ``conf:``) and ``key=value`` overrides.

    Unknown keys and wrong types raise ``ConfError`` (a ``ValueError``) naming the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        if "conf" in data and set(data) <= {"name", "conf"}:
            data = dict(data["conf"] or {})
    conf = load_conf(SceneConf, data, where=str(path) if path is not None else "SceneConf")
    return apply_overrides(conf, list(overrides)) if overrides else conf
