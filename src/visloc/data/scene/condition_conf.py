"""Typed, combinable image conditions: :class:`ConditionConf`, the named presets, ``"night+fog"`` names.

A condition is one frozen :class:`ConditionConf` (time of day, fog, rain, season tint, motion blur, sensor
noise, exposure). Named presets (:data:`CONDITION_PRESETS`) each set one field and combine with ``+``:
``parse_condition("night+fog+blur")``; a part ``field=value`` sets any value (``"dusk+fog=0.45"``).
:func:`condition_name` gives the canonical name, and ``parse_condition(condition_name(c)) == c`` for every
``c``. Two parts that set the same field (``"day+night"``, ``"fog+mist"``) are an error.

The presets (field = value):

    time           day, dusk, night                       (day is the default)
    season         summer, autumn, winter                 (summer is the default; an image tint only)
    fog            mist 0.05, fog 0.15, dense_fog 0.4     (visibility 200 m, 67 m, 25 m)
    rain           drizzle 0.3, rain 0.6, heavy_rain 1.0  (veil visibility 400 m, 200 m, 120 m)
    motion_blur_px blur 9, heavy_blur 21
    noise_std      noise 0.005, heavy_noise 0.015         (linear read noise, plus shot noise)
    exposure_ev    underexposed -1, overexposed +1

The season's ground and board texture swap is not here: ``build_city(conf, season)`` does it; a condition's
``season`` only tints the image. :class:`ConditionModel` holds the constants of the physical models (the night
model, dusk light, the airlight, visibilities, rain streaks, season tints, shot noise) that
:func:`~visloc.data.scene.conditions.apply_conditions` uses; its defaults are the data engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from visloc.conf import ConfError
from visloc.data.scene.config import NightConf

TimeOfDay = Literal["day", "dusk", "night"]
Season = Literal["summer", "autumn", "winter"]
TIMES: tuple[str, ...] = get_args(TimeOfDay)
SEASONS: tuple[str, ...] = get_args(Season)
#: the numeric fields of ConditionConf and their (min, max); motion_blur_px also takes 0 below its min
_RANGES: dict[str, tuple[float, float]] = {
    "fog": (0.0, 1.0), "rain": (0.0, 1.0), "motion_blur_px": (1.0, 101.0), "noise_std": (0.0, 0.5),
    "exposure_ev": (-8.0, 8.0),
}


def _check(ok: bool, where: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"{where}: {problem}, got {value!r}")


def _as_float(conf: object, name: str, where: str) -> float:
    """The field ``name`` of ``conf`` as a float (written back), or a ConfError naming it."""
    value = getattr(conf, name)
    _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}.{name}", "must be a number",
           value)
    object.__setattr__(conf, name, float(value))
    return float(value)


@dataclass(frozen=True)
class ConditionConf:
    """One image condition; the default is a clear summer day seen by an ideal camera (the image unchanged).

    Attributes:
        time: ``day`` (the rendered light), ``dusk`` (lower, warm light, darker sky) or ``night`` (the scene's
            night model, :class:`~visloc.data.scene.config.NightConf`, unchanged).
        fog: extinction of the fog veil as a share of its maximum, in [0, 1]: ``beta = fog * 3.912 /
            ConditionModel.fog_visibility_m`` per metre, i.e. a meteorological visibility (contrast down to
            2 %) of ``fog_visibility_m / fog`` metres (10 m / fog by default); 0 = no fog.
        rain: rain strength in [0, 1]: streaks, contrast loss and a veil (visibility
            ``ConditionModel.rain_visibility_m / rain``); 0 = no rain.
        season: ``summer`` (no tint), ``autumn`` (warm) or ``winter`` (cool, paler): an image-level tint only;
            the ground and board texture swap of a season is done by ``build_city(conf, season)``.
        motion_blur_px: length in pixels of a linear motion blur in a random direction; 0 = none, else in
            [1, 101].
        noise_std: sensor read noise (linear intensity units, [0, 0.5]); the shot noise grows with the signal
            (see :class:`ConditionModel`); 0 = none.
        exposure_ev: exposure change in stops, in [-8, 8]: +1 doubles the linear intensities before clipping.
    """

    time: TimeOfDay = "day"
    fog: float = 0.0
    rain: float = 0.0
    season: Season = "summer"
    motion_blur_px: float = 0.0
    noise_std: float = 0.0
    exposure_ev: float = 0.0

    def __post_init__(self) -> None:
        _check(self.time in TIMES, "ConditionConf.time", f"must be one of {TIMES}", self.time)
        _check(self.season in SEASONS, "ConditionConf.season", f"must be one of {SEASONS}", self.season)
        for name, (lo, hi) in _RANGES.items():
            value = _as_float(self, name, "ConditionConf")
            if name == "motion_blur_px":
                _check(value == 0.0 or lo <= value <= hi, "ConditionConf.motion_blur_px",
                       f"must be 0 or in [{lo:g}, {hi:g}]", value)
            else:
                _check(lo <= value <= hi, f"ConditionConf.{name}", f"must be in [{lo:g}, {hi:g}]", value)

    @property
    def is_identity(self) -> bool:
        """True when the condition leaves every image unchanged (the default)."""
        return self == ConditionConf()


@dataclass(frozen=True)
class DuskConf:
    """Dusk light, in linear intensities: ``out = gain * tint * image``, the sky also ``* sky_gain * sky_tint``.

    The sky is where the depth map says ``inf``; without a depth map there is no sky to tell apart.

    Attributes:
        gain: overall light in (0, 1].
        tint: per-channel (R, G, B) factor in (0, 2] of the low sun.
        sky_gain: extra factor of the sky in (0, 1]: the sky darker than by day.
        sky_tint: per-channel (R, G, B) factor in (0, 2] of the dusk sky.
    """

    gain: float = 0.3
    tint: tuple[float, ...] = (1.0, 0.8, 0.6)
    sky_gain: float = 0.5
    sky_tint: tuple[float, ...] = (1.0, 0.8, 0.9)

    def __post_init__(self) -> None:
        for name in ("gain", "sky_gain"):
            value = _as_float(self, name, "ConditionModel.dusk")
            _check(0.0 < value <= 1.0, f"ConditionModel.dusk.{name}", "must be in (0, 1]", value)
        for name in ("tint", "sky_tint"):
            _check_rgb(getattr(self, name), f"ConditionModel.dusk.{name}", 2.0)


def _check_rgb(value: tuple[float, ...], where: str, hi: float) -> None:
    _check(len(value) == 3 and all(isinstance(c, (int, float)) and 0.0 < c <= hi for c in value), where,
           f"must be 3 factors in (0, {hi:g}]", value)


@dataclass(frozen=True)
class ConditionModel:
    """Constants of the condition models (not part of a condition's name); intensities are linear RGB.

    Attributes:
        night: the night model (its errors name ``SceneConf.night.*``, the scene's own night conf).
        dusk: the dusk light.
        airlight: linear RGB of the day haze ``A`` in (0, 1] (``I = J t + A (1 - t)``); the other times of day
            and the season light it as they light the sky.
        fog_visibility_m: visibility in metres at ``fog = 1`` (> 0).
        rain_visibility_m: visibility in metres at ``rain = 1`` (> 0).
        rain_glare: share in [0, 1] of each pixel replaced by the image mean at ``rain = 1`` (contrast loss).
        streak_density: rain streaks per pixel at ``rain = 1`` (>= 0).
        streak_length: (min, max) streak length as a share of the image height, 0 < min <= max <= 1.
        streak_opacity: opacity in [0, 1] of a streak over the scene (its colour is the airlight).
        no_depth_m: the distance in metres (> 0) assumed everywhere for the fog and rain veils without a depth
            map.
        autumn_tint: per-channel factor in (0, 2] of the autumn light.
        winter_tint: per-channel factor in (0, 2] of the winter light.
        winter_desaturation: share in [0, 1] of the colour removed in winter.
        shot_gain: shot noise: the noise variance is ``noise_std ** 2 * (1 + shot_gain * signal)`` (>= 0).
    """

    night: NightConf = field(default_factory=NightConf)
    dusk: DuskConf = field(default_factory=DuskConf)
    airlight: tuple[float, ...] = (0.60, 0.64, 0.69)
    fog_visibility_m: float = 10.0
    rain_visibility_m: float = 120.0
    rain_glare: float = 0.2
    streak_density: float = 0.002
    streak_length: tuple[float, ...] = (0.04, 0.12)
    streak_opacity: float = 0.5
    no_depth_m: float = 10.0
    autumn_tint: tuple[float, ...] = (1.08, 0.96, 0.8)
    winter_tint: tuple[float, ...] = (0.95, 1.0, 1.1)
    winter_desaturation: float = 0.3
    shot_gain: float = 4.0

    def __post_init__(self) -> None:
        w = "ConditionModel"
        for name in ("fog_visibility_m", "rain_visibility_m", "no_depth_m"):
            _check(_as_float(self, name, w) > 0.0, f"{w}.{name}", "must be > 0", getattr(self, name))
        for name in ("rain_glare", "streak_opacity", "winter_desaturation"):
            value = _as_float(self, name, w)
            _check(0.0 <= value <= 1.0, f"{w}.{name}", "must be in [0, 1]", value)
        for name in ("streak_density", "shot_gain"):
            _check(_as_float(self, name, w) >= 0.0, f"{w}.{name}", "must be >= 0", getattr(self, name))
        _check_rgb(self.airlight, f"{w}.airlight", 1.0)
        _check_rgb(self.autumn_tint, f"{w}.autumn_tint", 2.0)
        _check_rgb(self.winter_tint, f"{w}.winter_tint", 2.0)
        lo_hi = self.streak_length
        _check(len(lo_hi) == 2 and 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0, f"{w}.streak_length",
               "must be (min, max) with 0 < min <= max <= 1", lo_hi)

    @property
    def fog_beta(self) -> float:
        """Extinction per metre at ``fog = 1``: ``-ln(0.02) / fog_visibility_m``."""
        return _KOSCHMIEDER / self.fog_visibility_m

    @property
    def rain_beta(self) -> float:
        """Extinction per metre at ``rain = 1``: ``-ln(0.02) / rain_visibility_m``."""
        return _KOSCHMIEDER / self.rain_visibility_m


#: the default models
DEFAULT_MODEL = ConditionModel()
#: -ln(0.02): Koschmieder's visibility constant (contrast threshold 2 %)
_KOSCHMIEDER = 3.912023005428146

#: the named parts of a condition name; each sets one ConditionConf field
_PARTS: dict[str, tuple[str, Any]] = {
    "day": ("time", "day"), "dusk": ("time", "dusk"), "night": ("time", "night"),
    "summer": ("season", "summer"), "autumn": ("season", "autumn"), "winter": ("season", "winter"),
    "mist": ("fog", 0.05), "fog": ("fog", 0.15), "dense_fog": ("fog", 0.4),
    "drizzle": ("rain", 0.3), "rain": ("rain", 0.6), "heavy_rain": ("rain", 1.0),
    "blur": ("motion_blur_px", 9.0), "heavy_blur": ("motion_blur_px", 21.0),
    "noise": ("noise_std", 0.005), "heavy_noise": ("noise_std", 0.015),
    "underexposed": ("exposure_ev", -1.0), "overexposed": ("exposure_ev", 1.0),
}
#: each named part as a whole condition; combine them with "+" in parse_condition
CONDITION_PRESETS: dict[str, ConditionConf] = {name: ConditionConf(**{k: v}) for name, (k, v) in _PARTS.items()}
#: the fields in canonical name order
_ORDER: tuple[str, ...] = ("time", "season", "fog", "rain", "motion_blur_px", "noise_std", "exposure_ev")


def _parse_part(part: str, text: str) -> tuple[str, Any]:
    if part in _PARTS:
        return _PARTS[part]
    key, sep, raw = part.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or key not in _ORDER:
        raise ConfError(f"condition {text!r}: unknown part {part!r}; known: {', '.join(_PARTS)}, "
                        f"or field=value with field one of {', '.join(_ORDER)}")
    if key in ("time", "season"):
        return key, raw
    try:
        return key, float(raw)
    except ValueError:
        raise ConfError(f"ConditionConf.{key}: must be a number, got {raw!r} (in condition {text!r})") from None


def parse_condition(text: str) -> ConditionConf:
    """The condition named ``text``: presets and ``field=value`` parts joined by ``+`` (``"night+fog+blur"``).

    Parts are case-insensitive and may carry spaces around them; fields not set keep their defaults (a clear
    summer day). Raises ``ConfError``: an unknown part (the message lists the known ones), two parts setting
    the same field (``"day+night"``, ``"fog+mist"``), or a value out of range (naming the field).
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfError(f"condition: expected a name such as 'night+fog', got {text!r}")
    values: dict[str, Any] = {}
    setters: dict[str, str] = {}
    for raw in text.split("+"):
        part = raw.strip().lower()
        if not part:
            raise ConfError(f"condition {text!r}: empty part")
        key, value = _parse_part(part, text)
        if key in setters:
            raise ConfError(f"condition {text!r}: {setters[key]!r} and {part!r} both set ConditionConf.{key}")
        values[key], setters[key] = value, part
    return ConditionConf(**values)


def condition_name(cond: ConditionConf) -> str:
    """Canonical name of ``cond``: its non-default fields joined by ``+``, ``"day"`` for the default.

    The fields come in the order time, season, fog, rain, blur, noise, exposure, each as its preset name when
    one matches, else ``field=value``. ``parse_condition(condition_name(cond)) == cond`` for every condition.
    """
    default = ConditionConf()
    by_value = {v: name for name, v in _PARTS.items()}
    parts = []
    for key in _ORDER:
        value = getattr(cond, key)
        if value == getattr(default, key):
            continue
        parts.append(by_value.get((key, value), f"{key}={value!r}"))
    return "+".join(parts) or "day"

