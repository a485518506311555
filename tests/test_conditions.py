"""Typed, combinable conditions: names, checks, determinism, exact models, the order of the steps, old API."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.conf import ConfError, load_conf
from visloc.data.scene import SceneConf, apply_condition, build_world, db_poses, intrinsics, render
from visloc.data.scene.condition_conf import Season, TimeOfDay
from visloc.data.scene.conditions import (
    CONDITION_PRESETS,
    DEFAULT_MODEL,
    ConditionConf,
    ConditionModel,
    DuskConf,
    airlight,
    apply_conditions,
    condition_name,
    linear_to_srgb,
    night,
    parse_condition,
    srgb_to_linear,
)
from visloc.data.scene.config import NightConf

QUIET = ConditionModel(night=NightConf(noise_std=0.0))  # the night model without its noise, for exact values
TIMES: tuple[TimeOfDay, ...] = ("day", "dusk", "night")
SEASONS: tuple[Season, ...] = ("summer", "autumn", "winter")
SMALL = SceneConf(width=160, height=120, focal=125.0, num_db=3)


def _photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[::4, ::4].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def street():
    """A rendered frame of the small street: (image float32 [H, W, 3], depth [H, W])."""
    conf = SMALL
    frame = render(build_world(conf), intrinsics(conf.focal, conf.width, conf.height), db_poses(conf)[1])
    return frame.image_float, frame.depth


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


# --- names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONDITION_PRESETS))
def test_every_preset_round_trips(name):
    cond = parse_condition(name)
    assert cond == CONDITION_PRESETS[name]
    assert parse_condition(condition_name(cond)) == cond
    if name not in ("day", "summer"):  # these two are the defaults, named "day"
        assert condition_name(cond) == name


@pytest.mark.parametrize(("text", "canonical"), [
    ("night+fog", "night+fog"),
    ("fog+night", "night+fog"),
    ("dusk+rain+blur", "dusk+rain+blur"),
    ("winter+night", "night+winter"),
    (" Night + Dense_Fog ", "night+dense_fog"),
    ("summer+day", "day"),
    ("day+fog=0.25+exposure_ev=-0.5", "fog=0.25+exposure_ev=-0.5"),
    ("autumn+drizzle+heavy_noise+underexposed+heavy_blur", "autumn+drizzle+heavy_blur+heavy_noise+underexposed"),
    ("motion_blur_px=4+noise_std=0.02+time=dusk", "dusk+motion_blur_px=4.0+noise_std=0.02"),
])
def test_combinations_have_a_canonical_name_that_round_trips(text, canonical):
    cond = parse_condition(text)
    assert condition_name(cond) == canonical
    assert parse_condition(canonical) == cond


def test_any_conf_round_trips_through_its_name():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cond = ConditionConf(time=TIMES[rng.integers(3)], season=SEASONS[rng.integers(3)],
                             fog=float(rng.choice([0.0, 0.15, rng.uniform()])),
                             rain=float(rng.choice([0.0, rng.uniform()])),
                             motion_blur_px=float(rng.choice([0.0, 9.0, rng.uniform(1, 101)])),
                             noise_std=float(rng.choice([0.0, rng.uniform(0, 0.5)])),
                             exposure_ev=float(rng.uniform(-8, 8)))
        assert parse_condition(condition_name(cond)) == cond


@pytest.mark.parametrize(("text", "match"), [
    ("sunny", r"unknown part 'sunny'; known: day, dusk, night, summer, autumn, winter, mist, fog"),
    ("day+night", r"'day' and 'night' both set ConditionConf\.time"),
    ("fog+mist", r"'fog' and 'mist' both set ConditionConf\.fog"),
    ("rain+rain", r"both set ConditionConf\.rain"),
    ("night++fog", "empty part"),
    ("", "expected a name"),
    ("fog=thick", r"ConditionConf\.fog: must be a number, got 'thick'"),
    ("fog=2", r"ConditionConf\.fog: must be in \[0, 1\], got 2\.0"),
    ("time=noon", r"ConditionConf\.time: must be one of"),
    ("colour=1", "unknown part 'colour=1'"),
])
def test_bad_names_raise_one_line(text, match):
    with pytest.raises(ConfError, match=match) as info:
        parse_condition(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ConditionConf(fog=2.0), "ConditionConf.fog: must be in [0, 1], got 2.0"),
    (lambda: ConditionConf(fog=-0.1), "ConditionConf.fog: must be in [0, 1], got -0.1"),
    (lambda: ConditionConf(rain=1.5), "ConditionConf.rain: must be in [0, 1], got 1.5"),
    (lambda: ConditionConf(time="noon"), "ConditionConf.time: must be one of ('day', 'dusk', 'night'), got 'noon'"),
    (lambda: ConditionConf(season="spring"), "ConditionConf.season: must be one of"),
    (lambda: ConditionConf(motion_blur_px=0.5), "ConditionConf.motion_blur_px: must be 0 or in [1, 101], got 0.5"),
    (lambda: ConditionConf(motion_blur_px=200.0), "ConditionConf.motion_blur_px: must be 0 or in [1, 101]"),
    (lambda: ConditionConf(noise_std=0.6), "ConditionConf.noise_std: must be in [0, 0.5], got 0.6"),
    (lambda: ConditionConf(exposure_ev=9.0), "ConditionConf.exposure_ev: must be in [-8, 8], got 9.0"),
    (lambda: ConditionConf(exposure_ev=float("nan")), "ConditionConf.exposure_ev: must be in [-8, 8], got nan"),
    (lambda: ConditionConf(fog="0.1"), "ConditionConf.fog: must be a number, got '0.1'"),
    (lambda: ConditionConf(noise_std=True), "ConditionConf.noise_std: must be a number, got True"),
    (lambda: DuskConf(gain=0.0), "ConditionModel.dusk.gain: must be in (0, 1], got 0.0"),
    (lambda: DuskConf(tint=(1.0, 0.8)), "ConditionModel.dusk.tint: must be 3 factors in (0, 2]"),
    (lambda: ConditionModel(fog_visibility_m=0.0), "ConditionModel.fog_visibility_m: must be > 0, got 0.0"),
    (lambda: ConditionModel(airlight=(0.5, 0.5, 1.5)), "ConditionModel.airlight: must be 3 factors in (0, 1]"),
    (lambda: ConditionModel(rain_glare=2.0), "ConditionModel.rain_glare: must be in [0, 1], got 2.0"),
    (lambda: ConditionModel(streak_length=(0.2, 0.1)), "ConditionModel.streak_length: must be (min, max)"),
    (lambda: ConditionModel(shot_gain=-1.0), "ConditionModel.shot_gain: must be >= 0, got -1.0"),
])
def test_bad_fields_raise_naming_the_field(build, message):
    with pytest.raises(ConfError) as info:
        build()
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_conf_loads_from_a_mapping_and_ints_become_floats():
    cond = load_conf(ConditionConf, {"time": "night", "fog": 0.15, "motion_blur_px": 9})
    assert cond == parse_condition("night+fog+blur")
    assert isinstance(cond.motion_blur_px, float)
    with pytest.raises(ConfError, match="time"):
        load_conf(ConditionConf, {"time": "noon"})


# --- determinism and the identity --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["night", "dusk+rain+blur", "winter+dense_fog+heavy_noise", "heavy_rain"])
def test_deterministic_per_seed(street, name):
    image, depth = street
    cond = parse_condition(name)
    a = apply_conditions(image, cond, np.random.default_rng(7), depth)
    b = apply_conditions(image, cond, np.random.default_rng(7), depth)
    c = apply_conditions(image, cond, np.random.default_rng(8), depth)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == image.shape
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_day_and_zero_noise_zero_blur_leave_the_image_unchanged(street):
    image, depth = street
    for cond in (parse_condition("day"), ConditionConf(noise_std=0.0, motion_blur_px=0.0), ConditionConf()):
        out = apply_conditions(image, cond, np.random.default_rng(0), depth)
        np.testing.assert_array_equal(out, image)
        assert out is not image


def test_srgb_round_trip():
    x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=2e-6)
    np.testing.assert_allclose(srgb_to_linear(np.float32([0.0, 0.5, 1.0])), [0.0, 0.21404, 1.0], atol=1e-5)


# --- exact models on constructed images --------------------------------------------------------------------

def test_fog_is_koschmieder_and_the_sky_gets_the_airlight():
    j = np.float32([[0.2, 0.5, 0.8], [0.9, 0.1, 0.4], [0.3, 0.3, 0.3]])
    image = np.broadcast_to(j[None], (2, 3, 3)).copy()
    depth = np.float32([[0.0, 12.0, np.inf], [5.0, 40.0, np.inf]])
    cond = ConditionConf(fog=0.4)
    out = apply_conditions(image, cond, np.random.default_rng(0), depth)
    a = np.asarray(DEFAULT_MODEL.airlight, np.float32)
    np.testing.assert_allclose(airlight(cond, DEFAULT_MODEL), a, rtol=1e-6)
    beta = 0.4 * -np.log(0.02) / DEFAULT_MODEL.fog_visibility_m
    t = np.exp(-beta * depth)[..., None]
    expected = srgb_to_linear(image) * t + a * (1 - t)
    np.testing.assert_allclose(srgb_to_linear(out), expected, atol=2e-6)
    np.testing.assert_allclose(srgb_to_linear(out[:, 2]), np.broadcast_to(a, (2, 3)), atol=2e-6)  # the sky
    np.testing.assert_allclose(out[0, 0], image[0, 0], atol=2e-6)  # at 0 m nothing is veiled
    # visibility: at fog_visibility_m / fog the contrast is down to 2 %
    v = DEFAULT_MODEL.fog_visibility_m / 0.4
    assert np.exp(-beta * v) == pytest.approx(0.02)


def test_fog_without_depth_is_a_uniform_veil_at_no_depth_m():
    image = np.full((4, 4, 3), 0.2, np.float32)
    out = apply_conditions(image, ConditionConf(fog=0.3), np.random.default_rng(0))
    t = np.exp(-0.3 * DEFAULT_MODEL.fog_beta * DEFAULT_MODEL.no_depth_m)
    expected = srgb_to_linear(image) * t + np.asarray(DEFAULT_MODEL.airlight, np.float32) * (1 - t)
    np.testing.assert_allclose(srgb_to_linear(out), expected, atol=2e-6)


def test_exposure_plus_one_ev_doubles_linear_values_before_clipping():
    image = np.float32([[[0.05, 0.2, 0.4], [0.6, 0.8, 1.0]]])
    out = apply_conditions(image, ConditionConf(exposure_ev=1.0), np.random.default_rng(0))
    np.testing.assert_allclose(srgb_to_linear(out), np.minimum(2 * srgb_to_linear(image), 1.0), atol=2e-6)
    back = apply_conditions(image, ConditionConf(exposure_ev=-2.0), np.random.default_rng(0))
    np.testing.assert_allclose(srgb_to_linear(back), srgb_to_linear(image) / 4, atol=2e-6)


def test_sensor_noise_is_gaussian_with_signal_dependent_variance():
    levels = np.float32([0.0, 0.05, 0.25])  # linear
    image = np.repeat(linear_to_srgb(levels)[None, :, None], 3, 2).repeat(20000, 0)  # [20000, 3, 3]
    s = 0.02
    out = srgb_to_linear(apply_conditions(image, ConditionConf(noise_std=s), np.random.default_rng(1)))
    for k, level in enumerate(levels[1:], start=1):  # away from the clipping at 0
        sample = out[:, k].ravel()
        assert sample.mean() == pytest.approx(level, abs=2e-3)
        assert sample.std() == pytest.approx(s * np.sqrt(1 + DEFAULT_MODEL.shot_gain * level), rel=0.03)


def test_night_equals_the_old_night_output(street):
    image, depth = street
    photo = _photo()
    for img, d in ((image, depth), (image, None), (photo, None)):
        new = apply_conditions(img, parse_condition("night"), np.random.default_rng(5), d)
        old = night(img, NightConf(), np.random.default_rng(5), d)
        np.testing.assert_array_equal(new, old)
    old = apply_condition(image, "night", SMALL, np.random.default_rng(5), depth)
    np.testing.assert_array_equal(apply_conditions(image, parse_condition("night"), np.random.default_rng(5), depth),
                                  old)


def test_dusk_is_the_dusk_light_and_darkens_the_sky_more():
    image = np.full((1, 2, 3), 0.6, np.float32)
    depth = np.float32([[10.0, np.inf]])
    out = srgb_to_linear(apply_conditions(image, parse_condition("dusk"), np.random.default_rng(0), depth))
    dusk = DEFAULT_MODEL.dusk
    ground = srgb_to_linear(image[0, 0]) * dusk.gain * np.asarray(dusk.tint)
    np.testing.assert_allclose(out[0, 0], ground, atol=2e-6)
    np.testing.assert_allclose(out[0, 1], ground * dusk.sky_gain * np.asarray(dusk.sky_tint), atol=2e-6)
    assert out[0, 0, 0] > out[0, 0, 2]  # warm


def test_seasons_tint_the_image():
    photo = _photo()
    rng = np.random.default_rng(0)
    ratio = lambda img: img[..., 0].mean() / img[..., 2].mean()  # noqa: E731
    autumn = apply_conditions(photo, parse_condition("autumn"), rng)
    winter = apply_conditions(photo, parse_condition("winter"), rng)
    assert ratio(autumn) > 1.05 * ratio(photo) and ratio(winter) < 0.95 * ratio(photo)
    spread = lambda img: (img.max(-1) - img.min(-1)).mean()  # noqa: E731  # colourfulness
    assert spread(srgb_to_linear(winter)) < spread(srgb_to_linear(photo))


# --- the order of the steps --------------------------------------------------------------------------------

def test_order_fog_is_lit_by_the_time_of_day():
    """The veil comes after the light: the fogged sky is the airlight lit by the time of day (at night by the
    camera's light at 0 m, scattered back), darker at dusk and at night than by day."""
    image = np.full((1, 2, 3), 0.5, np.float32)
    depth = np.float32([[8.0, np.inf]])
    cond = parse_condition("night+fog")
    out = apply_conditions(image, cond, np.random.default_rng(0), depth, model=QUIET)
    a_night = airlight(cond, QUIET)
    haze = linear_to_srgb(np.asarray(QUIET.airlight, np.float32)).reshape(1, 1, 3)
    expected_a = srgb_to_linear(night(haze, QUIET.night, np.random.default_rng(0), np.float32([[0.0]])))
    np.testing.assert_allclose(a_night, expected_a.reshape(3), atol=1e-6)
    np.testing.assert_allclose(srgb_to_linear(out[0, 1]), a_night, atol=2e-6)
    dusk_a = airlight(parse_condition("dusk"), QUIET)
    assert (a_night < dusk_a).all() and (dusk_a < airlight(ConditionConf(), QUIET)).all()
    # the season tints the airlight as it tints the scene
    winter = airlight(parse_condition("winter"), QUIET)
    assert winter[2] / winter[0] > airlight(ConditionConf(), QUIET)[2] / airlight(ConditionConf(), QUIET)[0]


def test_order_exposure_scales_the_airlight_too_and_clipping_comes_after_the_noise():
    image = np.full((1, 2, 3), 0.5, np.float32)
    depth = np.float32([[8.0, np.inf]])
    out = apply_conditions(image, parse_condition("fog+overexposed"), np.random.default_rng(0), depth)
    a = np.asarray(DEFAULT_MODEL.airlight, np.float32)
    np.testing.assert_allclose(srgb_to_linear(out[0, 1]), np.minimum(2 * a, 1.0), atol=2e-6)
    bright = np.full((64, 64, 3), linear_to_srgb(np.float32(0.8)), np.float32)  # 1.6 after +1 EV, then noise
    out = apply_conditions(bright, parse_condition("overexposed+noise"), np.random.default_rng(0))
    assert (out == 1.0).all()  # noise added before the clipping cannot pull a saturated pixel down


def test_order_sensor_noise_is_not_blurred(street):
    """Blur before noise: the noise on a flat image keeps its full strength, blurred or not."""
    flat = np.full((200, 200, 3), linear_to_srgb(np.float32(0.1)), np.float32)
    std = lambda cond: srgb_to_linear(  # noqa: E731
        apply_conditions(flat, parse_condition(cond), np.random.default_rng(2)))[20:-20, 20:-20].std()
    assert std("heavy_blur+noise") == pytest.approx(std("noise"), rel=0.05)
    image, _ = street
    grad = lambda img: np.abs(np.diff(img, axis=1)).mean()  # noqa: E731
    assert grad(apply_conditions(image, parse_condition("heavy_blur"), np.random.default_rng(0))) < 0.7 * grad(image)


# --- on real images ------------------------------------------------------------------------------------------

def test_dusk_darker_than_day_night_darker_than_dusk_on_a_photo():
    photo = _photo()
    means = {name: _luma(apply_conditions(photo, parse_condition(name), np.random.default_rng(0))).mean()
             for name in ("day", "dusk", "night")}
    assert means["dusk"] < 0.8 * means["day"]
    assert means["night"] < 0.8 * means["dusk"]


def test_fog_and_rain_reduce_contrast_on_a_street_frame(street):
    image, depth = street
    rms = lambda img: _luma(img).std()  # noqa: E731  # RMS contrast
    contrast = {name: rms(apply_conditions(image, parse_condition(name), np.random.default_rng(0), depth))
                for name in ("day", "mist", "fog", "dense_fog", "rain")}
    assert contrast["dense_fog"] < contrast["fog"] < contrast["mist"] < contrast["day"]
    assert contrast["fog"] < 0.8 * contrast["day"]
    assert contrast["rain"] < 0.9 * contrast["day"]
    # the near ground keeps more of its contrast than the distant facades
    fogged = apply_conditions(image, parse_condition("fog"), np.random.default_rng(0), depth)
    near, far = depth < 6.0, np.isfinite(depth) & (depth > 20.0)
    assert near.any() and far.any()
    kept = lambda mask: _luma(fogged)[mask].std() / _luma(image)[mask].std()  # noqa: E731
    assert kept(near) > kept(far)


def test_rain_draws_streaks():
    image = np.full((120, 160, 3), 0.2, np.float32)
    out = apply_conditions(image, parse_condition("heavy_rain"), np.random.default_rng(3))
    lum = _luma(out)
    base = np.median(lum)
    streaked = lum > base + 0.02
    assert 0.002 < streaked.mean() < 0.3
    assert np.abs(np.diff(streaked.astype(np.int8), axis=0)).sum() < np.abs(np.diff(streaked.astype(np.int8),
                                                                                     axis=1)).sum()  # near vertical


def test_depth_is_checked():
    image = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"depth must be \(4, 4\)"):
        apply_conditions(image, parse_condition("fog"), np.random.default_rng(0), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="NaN or negative"):
        apply_conditions(image, parse_condition("fog"), np.random.default_rng(0), np.full((4, 4), -1.0, np.float32))
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        apply_conditions(image[..., 0], parse_condition("fog"), np.random.default_rng(0))
