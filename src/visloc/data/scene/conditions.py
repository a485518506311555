"""Conditions applied to rendered images: typed, combinable ones (:func:`apply_conditions`) and the old ones.

:func:`apply_conditions` takes a :class:`~visloc.data.scene.condition_conf.ConditionConf` (time of day, fog,
rain, season tint, motion blur, sensor noise, exposure; named by :func:`parse_condition` /
:func:`condition_name`, e.g. ``"night+fog+blur"``) and applies it in the order light travels. The old
:func:`apply_condition` (``day``: unchanged, ``night``, ``blur`` with a ``SceneConf``) stays as it was: its
output is byte-identical to before, and ``night`` under :func:`apply_conditions` is the same model.

Images are float32 RGB ``[H, W, 3]`` in [0, 1] (sRGB-encoded); every function returns a new array and is
reproducible from the generator it is given.
"""

from __future__ import annotations

import cv2
import numpy as np

from visloc.data.scene.condition_conf import (
    CONDITION_PRESETS,
    DEFAULT_MODEL,
    ConditionConf,
    ConditionModel,
    DuskConf,
    condition_name,
    parse_condition,
)
from visloc.data.scene.condition_steps import linear_to_srgb, rain, season_tint, sensor_noise, srgb_to_linear, veil
from visloc.data.scene.config import CONDITIONS, BlurConf, NightConf, SceneConf

__all__ = [
    "CONDITION_PRESETS", "DEFAULT_MODEL", "ConditionConf", "ConditionModel", "DuskConf", "airlight",
    "apply_condition", "apply_conditions", "blur", "condition_name", "linear_to_srgb", "motion_kernel", "night",
    "night_light", "parse_condition", "sensor_noise", "srgb_to_linear", "veil",
]


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{where}: image must be [H, W, 3], got {img.shape}")
    return img.astype(np.float32, copy=False)


def night(image: np.ndarray, conf: NightConf, rng: np.random.Generator, depth: np.ndarray | None = None) -> np.ndarray:
    """Night-like image: ``clip(gain * tint * light * image ** gamma + N(0, noise_std), 0, 1)``.

    Args:
        image: float32 RGB ``[H, W, 3]`` in [0, 1].
        conf: gain, gamma, tint, noise, light falloff.
        rng: generator of the noise.
        depth: optional float32 ``[H, W]`` depth in metres (``inf`` for the sky); with it, ``light =
            ambient + (1 - ambient) / (1 + (depth / falloff_m) ** 2)``, without it (or ``falloff_m = 0``) 1.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1]; darker than ``image`` for ``gain < 1`` or ``gamma > 1``.
    """
    out = night_light(_check_image(image, "night"), conf, depth)
    return _night_noise(out, conf, rng)


def night_light(image: np.ndarray, conf: NightConf, depth: np.ndarray | None = None) -> np.ndarray:
    """The light of :func:`night` without its noise and clipping: ``gain * tint * light * image ** gamma``.

    float32 ``[H, W, 3]``, in [0, 1] when every ``tint <= 1``.
    """
    img = _check_image(image, "night")
    out = np.power(np.clip(img, 0.0, 1.0), np.float32(conf.gamma)) * (np.float32(conf.gain)
                                                                         * np.asarray(conf.tint, np.float32))
    if depth is not None and conf.falloff_m > 0:
        if depth.shape != img.shape[:2]:
            raise ValueError(f"night: depth must be {img.shape[:2]}, got {depth.shape}")
        fade = 1.0 / (1.0 + np.square(depth.astype(np.float32) / np.float32(conf.falloff_m)))
        out *= (conf.ambient + (1.0 - conf.ambient) * fade)[..., None].astype(np.float32)
    return out


def _night_noise(out: np.ndarray, conf: NightConf, rng: np.random.Generator) -> np.ndarray:
    """The night model's display-domain noise ``N(0, noise_std)`` and the clipping to [0, 1]."""
    if conf.noise_std > 0:
        out += rng.normal(0.0, conf.noise_std, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def motion_kernel(length_px: float, angle_deg: float) -> np.ndarray:
    """Normalised float32 line kernel of ``length_px`` pixels at ``angle_deg`` (odd square size)."""
    if length_px < 1:
        raise ValueError(f"motion_kernel: length_px must be >= 1, got {length_px}")
    size = int(np.ceil(length_px)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    d = 0.5 * (length_px - 1) * np.array([np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))])
    # anti-aliased line: sample many points along the segment
    for s in np.linspace(-1.0, 1.0, 4 * size + 1):
        x, y = c + s * d
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += w
    return kernel / kernel.sum()


def blur(image: np.ndarray, conf: BlurConf, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of ``conf.length_px`` in a random direction, then Gaussian noise ``conf.noise_std``.

    Args:
        image: float32 RGB ``[H, W, 3]`` in [0, 1].
        conf: blur length and noise.
        rng: generator of the direction and the noise.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1]; a constant image stays constant up to the noise.
    """
    img = _check_image(image, "blur")
    kernel = motion_kernel(conf.length_px, rng.uniform(0.0, 180.0))
    out = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if conf.noise_std > 0:
        out += rng.normal(0.0, conf.noise_std, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def apply_condition(image: np.ndarray, condition: str, conf: SceneConf, rng: np.random.Generator,
                    depth: np.ndarray | None = None) -> np.ndarray:
    """Apply ``condition`` (``day``: unchanged copy, ``night``, ``blur``) with the settings of ``conf``.

    ``depth`` [H, W] (metres, ``inf`` = sky) feeds the night light falloff; the other conditions ignore it.
    """
    if condition == "day":
        return _check_image(image, "day").copy()
    if condition == "night":
        return night(image, conf.night, rng, depth)
    if condition == "blur":
        return blur(image, conf.blur, rng)
    raise ValueError(f"apply_condition: unknown condition {condition!r}; expected one of {CONDITIONS}")


def _check_depth(depth: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if depth is None:
        return None
    d = np.asarray(depth, np.float32)
    if d.shape != shape[:2]:
        raise ValueError(f"apply_conditions: depth must be {shape[:2]}, got {d.shape}")
    if np.isnan(d).any() or (d < 0).any():
        raise ValueError("apply_conditions: depth must be >= 0 metres (inf = sky), got NaN or negative values")
    return d


def _time_of_day(img: np.ndarray, time: str, model: ConditionModel,
                 depth: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """The light of ``time``: (image, is it linear?); night stays in the display domain (the old model)."""
    if time == "night":
        return night_light(img, model.night, depth), False
    if time == "dusk":
        dusk = model.dusk
        out = srgb_to_linear(img) * (np.float32(dusk.gain) * np.asarray(dusk.tint, np.float32))
        if depth is not None:
            sky = np.isinf(depth)
            out[sky] *= np.float32(dusk.sky_gain) * np.asarray(dusk.sky_tint, np.float32)
        return out, True
    return img.copy(), False


def airlight(cond: ConditionConf, model: ConditionModel) -> np.ndarray:
    """float32 [3] linear airlight ``A`` of ``cond``: the day haze, lit by the time of day, season-tinted.

    By day and at dusk the haze is lit like the sky (``depth = inf``: at dusk the darker sky); at night by the
    camera's carried light at 0 m (the glow of its own light scattered back by the fog), not by the ambient
    part alone, so that a night fog is a dim grey veil rather than black.
    """
    haze = linear_to_srgb(np.asarray(model.airlight, np.float32)).reshape(1, 1, 3)
    at = np.float32(0.0 if cond.time == "night" else np.inf)
    x, linear = _time_of_day(haze, cond.time, model, np.full((1, 1), at, np.float32))
    x = x if linear else srgb_to_linear(x)
    return season_tint(x, cond.season, model).reshape(3)


def _needs_linear(cond: ConditionConf) -> bool:
    return (cond.season != "summer" or cond.fog > 0 or cond.rain > 0 or cond.exposure_ev != 0
            or cond.motion_blur_px > 0 or cond.noise_std > 0)


def apply_conditions(image: np.ndarray, cond: ConditionConf, rng: np.random.Generator,
                     depth: np.ndarray | None = None, *, model: ConditionModel = DEFAULT_MODEL,
                     camera: bool = True) -> np.ndarray:
    """``image`` seen under ``cond``, reproducible from ``rng``.

    The steps, in the order light travels, on linear intensities (sRGB decoded, encoded again at the end):

    1. the scene's light: ``time`` (dusk: ``ConditionModel.dusk``; night: the scene's night model
       :func:`night_light`, which works on the sRGB values as it always has) and the ``season`` tint;
    2. the atmosphere: the fog veil, then rain (its veil, contrast loss, streaks), with the airlight
       :func:`airlight` lit by the same time and season; the sky (``depth = inf``) becomes the airlight;
    3. the camera: exposure (``2 ** exposure_ev``, on everything the lens receives, airlight included), motion
       blur in a random direction, sensor noise (read + shot, not blurred), clipping to [0, 1];
    4. at night the night model's own display-domain noise, then clipping (exactly :func:`night`).

    Steps whose field is at its default are skipped: the default condition returns a copy of ``image``, and
    ``night`` alone returns exactly ``night(image, model.night, rng, depth)``.

    Args:
        image: float32 RGB ``[H, W, 3]`` in [0, 1] (sRGB-encoded, as rendered).
        cond: the condition.
        rng: generator of every random draw (rain streaks, blur direction, noise), in that order.
        depth: optional float32 ``[H, W]`` z-depth in metres (``inf`` = sky) for the night light falloff, the
            dusk sky and the fog and rain veils (``model.no_depth_m`` everywhere without it).
        model: the constants of the models.
        camera: False leaves out the frame camera (motion blur, sensor noise, the night model's noise): the
            light that reaches a sensor that models its own noise, as the event simulator does. Exposure
            stays (it scales the light).

    Returns:
        float32 ``[H, W, 3]`` in [0, 1].
    """
    img = _check_image(image, "apply_conditions")
    depth = _check_depth(depth, img.shape)
    if cond.is_identity:
        return img.copy()
    x, linear = _time_of_day(img, cond.time, model, depth)
    if _needs_linear(cond) or linear:
        x = season_tint(x if linear else srgb_to_linear(x), cond.season, model)
        a = airlight(cond, model)
        if cond.fog > 0:
            x = veil(x, cond.fog * model.fog_beta, a, depth, model.no_depth_m)
        if cond.rain > 0:
            x = rain(x, cond, a, depth, model, rng)
        if cond.exposure_ev != 0:
            x = x * np.float32(2.0 ** cond.exposure_ev)
        if cond.motion_blur_px > 0 and camera:
            kernel = motion_kernel(cond.motion_blur_px, rng.uniform(0.0, 180.0))
            x = cv2.filter2D(np.ascontiguousarray(x, np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)
        if cond.noise_std > 0 and camera:
            x = sensor_noise(x, cond.noise_std, model.shot_gain, rng)
        x = linear_to_srgb(x)
    if cond.time == "night" and camera:
        return _night_noise(x, model.night, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
