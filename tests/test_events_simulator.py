"""The ESIM simulator on constructed inputs with known answers (``visloc.events.simulator``)."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.events.simulator import EsimConf, EventSimulator, _signal_crossings, simulate_frames, to_intensity
from visloc.events.stream import EventStream

#: no noise of any kind, no refractory period: the deterministic core
CLEAN = EsimConf(sigma_contrast=0.0, sigma_noise=0.0, refractory_us=0, leak_rate_hz=0.0, shot_noise_rate_hz=0.0)


def _concat(chunks: list[EventStream]) -> EventStream:
    first = chunks[0]
    return EventStream(np.concatenate([c.t for c in chunks]), np.concatenate([c.x for c in chunks]),
                       np.concatenate([c.y for c in chunks]), np.concatenate([c.p for c in chunks]),
                       first.sensor_size, first.origin_us)


def _run(frames: list[np.ndarray], times_us: list[int] | np.ndarray, conf: EsimConf) -> EventStream:
    chunks = list(simulate_frames(frames, [int(t) for t in times_us], conf))
    assert len(chunks) == len(frames) - 1
    return _concat(chunks)


def _log_ramp(slopes: np.ndarray, times_us: np.ndarray, base: float, conf: EsimConf) -> list[np.ndarray]:
    """Frames whose log brightness ``log(eps + I)`` is ``log(base) + slope * (t - t[0])`` (seconds) per pixel."""
    return [np.exp(np.log(base) + slopes * ((t - times_us[0]) * 1e-6)) - conf.log_eps for t in times_us]


@pytest.mark.parametrize("sign", [1, -1], ids=["brighter", "darker"])
def test_a_log_ramp_gives_floor_of_change_over_c_events_at_the_analytic_times(sign):
    """Done-when of issue 14: exact counts per pixel, every crossing within 1 µs of ``t0 + k C / slope``."""
    conf = EsimConf(**{**CLEAN.__dict__, "contrast_pos": 0.2, "contrast_neg": 0.3})
    w, h = 6, 4
    slopes = sign * np.linspace(0.05, 1.8, w * h).reshape(h, w)  # log units per second
    rng = np.random.default_rng(1)
    times = 1_000_000 + np.cumsum(np.r_[0, rng.integers(100_000, 250_000, 6)])  # uneven intervals, origin != 0
    events = _run(_log_ramp(slopes, times, 0.06 if sign > 0 else 0.95, conf), times, conf)
    per_interval = np.abs(slopes).max() * np.diff(times).max() * 1e-6 / conf.contrast_pos
    assert per_interval > 2  # several crossings in one interval

    assert events.origin_us == times[0] and np.all(np.diff(events.t) >= 0)
    assert set(np.unique(events.p)) == {sign}
    duration_s = (times[-1] - times[0]) * 1e-6
    c = conf.contrast_pos if sign > 0 else conf.contrast_neg
    for y in range(h):
        for x in range(w):
            b = abs(slopes[y, x])
            mine = events.t[(events.x == x) & (events.y == y)]
            n = int(np.floor(b * duration_s / c))
            assert len(mine) == n, (x, y)
            analytic_us = np.arange(1, n + 1) * c / b * 1e6
            assert np.all(np.abs(mine - analytic_us) <= 1.0), (x, y)
    assert len(events) == sum(int(np.floor(abs(b) * duration_s / c)) for b in slopes.ravel())


def test_a_linear_ramp_without_log_counts_intensity_steps():
    conf = EsimConf(**{**CLEAN.__dict__, "use_log": False, "contrast_pos": 0.05, "contrast_neg": 0.05})
    times = np.arange(0, 1_000_001, 100_000)
    frames = [np.full((2, 3), 0.1 + 0.73 * t * 1e-6) for t in times]  # 0.73 / 0.05 = 14.6 crossings
    events = _run(frames, times, conf)
    assert len(events) == 6 * 14
    analytic = np.repeat(np.arange(1, 15) * 0.05 / 0.73 * 1e6, 6)
    assert np.all(np.abs(events.t - analytic) <= 1.0)


def test_equal_stamps_come_in_pixel_order():
    times = np.array([0, 50_000])
    frames = [np.full((3, 4), 0.2), np.full((3, 4), 0.9)]
    events = _run(frames, times, CLEAN)
    n = int(np.floor((np.log(0.9 + 1e-3) - np.log(0.2 + 1e-3)) / 0.2))
    assert len(events) == 12 * n
    for k in range(n):  # the k-th crossing of every pixel has one stamp; pixels in row-major order
        block = slice(12 * k, 12 * (k + 1))
        assert len(set(events.t[block].tolist())) == 1
        assert (events.y[block].astype(int) * 4 + events.x[block]).tolist() == list(range(12))


def test_constant_frames_give_no_events_and_the_first_frame_none():
    conf = EsimConf(shot_noise_rate_hz=0.0, leak_rate_hz=0.0, sigma_noise=0.05)  # mismatch and noise on
    sim = EventSimulator((5, 4), conf)
    assert not sim.initialised
    assert len(sim.feed(np.full((4, 5), 0.4), 10)) == 0
    assert sim.initialised
    for t in range(20, 2000, 10):
        assert len(sim.feed(np.full((4, 5), 0.4), t)) == 0


def test_mismatch_is_drawn_once_per_seed():
    conf = EsimConf(**{**CLEAN.__dict__, "sigma_contrast": 0.05})
    sim = EventSimulator((40, 30), conf)
    c_pos, c_neg = sim.thresholds
    assert c_pos.shape == (30, 40) and not np.array_equal(c_pos, c_neg)
    assert abs(c_pos.mean() - 0.2) < 0.01 and abs(c_pos.std() - 0.05) < 0.01 and c_pos.min() >= 0.01
    times = np.arange(0, 500_001, 50_000)
    for t in times:
        sim.feed(np.full((30, 40), 0.3 + 0.5 * t * 1e-6), int(t))
        assert np.array_equal(sim.thresholds[0], c_pos) and np.array_equal(sim.thresholds[1], c_neg)
    again = EventSimulator((40, 30), conf).thresholds
    other = EventSimulator((40, 30), EsimConf(**{**conf.__dict__, "seed": 1})).thresholds
    assert np.array_equal(again[0], c_pos) and np.array_equal(again[1], c_neg)
    assert not np.array_equal(other[0], c_pos)


def test_each_pixel_counts_with_its_own_threshold():
    conf = EsimConf(**{**CLEAN.__dict__, "sigma_contrast": 0.04})
    w, h = 8, 5
    times = np.linspace(0, 1_000_000, 11).astype(np.int64)
    frames = _log_ramp(np.full((h, w), 1.9), times, 0.1, conf)
    c_pos = EventSimulator((w, h), conf).thresholds[0]
    events = _run(frames, times, conf)
    counts = np.bincount(events.y.astype(int) * w + events.x, minlength=w * h).reshape(h, w)
    assert np.array_equal(counts, np.floor(1.9 / c_pos).astype(int))


def _one_pixel_ramp(times_us: list[int], spacing_us: int, conf: EsimConf) -> EventStream:
    """One pixel whose log brightness crosses a level every ``spacing_us`` (C = 0.2)."""
    slope = np.full((1, 1), 0.2 / (spacing_us * 1e-6))
    return _run(_log_ramp(slope, np.asarray(times_us), 0.05, conf), times_us, conf)


def test_refractory_drops_the_events_too_close_to_the_last_one_kept():
    """Crossings every 100 µs; ESIM's rule: kept when ``t - t_last_kept >= period``; the reference still advances."""
    times = [0, 250, 500, 1000, 1450]  # crossings at 100 ... 1400, some in each interval
    free = _one_pixel_ramp(times, 100, CLEAN)
    assert free.t.tolist() == list(range(100, 1401, 100))
    for period, kept in ((250, [100, 400, 700, 1000, 1300]), (300, [100, 400, 700, 1000, 1300]),
                         (301, [100, 500, 900, 1300]), (1, list(range(100, 1401, 100)))):
        conf = EsimConf(**{**CLEAN.__dict__, "refractory_us": period})
        assert _one_pixel_ramp(times, 100, conf).t.tolist() == kept, period


def test_refractory_applies_across_frames_and_per_pixel():
    conf = EsimConf(**{**CLEAN.__dict__, "refractory_us": 150})
    sim = EventSimulator((2, 1), conf)
    lo, hi = np.log(0.3 + 1e-3), np.log(0.3 + 1e-3) + 0.25  # one crossing per step up
    frame = [np.array([[0.3, 0.3]]), np.exp(np.array([[hi, lo]])) - 1e-3, np.exp(np.array([[hi + 0.25, hi]])) - 1e-3]
    sim.feed(frame[0], 0)
    first = sim.feed(frame[1], 100)  # pixel 0 crosses at 80
    second = sim.feed(frame[2], 200)  # pixel 0 at 160 (80 after its last: dropped), pixel 1 at 180 (its first)
    assert first.t.tolist() == [80] and first.x.tolist() == [0]
    assert second.t.tolist() == [180] and second.x.tolist() == [1]


def test_overdue_levels_fire_at_the_start_of_the_interval():
    """Levels already behind ``L0`` (a reference moved by shot noise) fire at ``t0``, then the interpolated ones."""
    ref, s0, s1 = np.array([0.0]), np.array([0.25]), np.array([0.35])
    ev, new_ref = _signal_crossings(s0, s1, ref, np.array([0.1]), np.array([0.1]), 1000, 100)
    assert ev.t.tolist() == [1000, 1000, 1050] and ev.p.tolist() == [1, 1, 1]
    assert new_ref.tolist() == pytest.approx([0.3])
    ev, new_ref = _signal_crossings(s1, s0, new_ref, np.array([0.1]), np.array([0.1]), 0, 100)  # back down
    assert ev.t.tolist() == [] and new_ref.tolist() == pytest.approx([0.3])  # 0.2 not reached (s0 = 0.25)


@pytest.mark.parametrize("frames", [11, 201])
def test_threshold_noise_gives_change_over_mean_c_at_any_frame_rate(frames):
    """A draw per crossing: ~ change / E[C] events however finely the ramp is sampled (ESIM's per-interval
    draw gives ~2 of the 10 at 201 frames, see the simulator's docstring)."""
    conf = EsimConf(**{**CLEAN.__dict__, "sigma_noise": 0.05})
    w, h = 20, 10
    times = np.linspace(0, 2_000_000, frames).astype(np.int64)
    events = _run(_log_ramp(np.full((h, w), 1.0), times, 0.1, conf), times, conf)
    counts = np.bincount(events.y.astype(int) * w + events.x, minlength=w * h)
    assert counts.min() >= 6 and abs(counts.mean() - 10) < 0.5
    assert np.all(np.diff(events.t) >= 0) and set(events.p.tolist()) == {1}
    assert np.array_equal(EventSimulator((w, h), conf).thresholds[0], np.full((h, w), 0.2))  # noise is not mismatch


def test_leak_fires_on_events_at_its_rate_on_a_static_scene():
    conf = EsimConf(**{**CLEAN.__dict__, "leak_rate_hz": 10.0, "leak_jitter_fraction": 0.0,
                       "leak_rate_cov_decades": 0.0})
    times = np.arange(0, 1_000_001, 40_000)
    events = _run([np.full((3, 3), 0.5)] * len(times), times, conf)
    assert set(events.p.tolist()) == {1} and len(events) == 9 * 10
    assert np.all(np.abs(events.t - np.repeat(np.arange(1, 11) * 100_000, 9)) <= 1)


def test_shot_noise_rate_and_balance():
    rate = 40.0
    conf = EsimConf(**{**CLEAN.__dict__, "shot_noise_rate_hz": rate})
    w, h, intensity = 50, 40, 0.0
    times = np.arange(0, 1_000_001, 20_000)
    events = _run([np.full((h, w), intensity)] * len(times), times, conf)
    expected = rate * (1 - 0.75 * 20 / 275) * w * h  # v2e's rate at I = 0 over 1 s, both polarities
    assert abs(len(events) - expected) < 4 * np.sqrt(expected)
    assert abs(int((events.p > 0).sum()) - len(events) / 2) < 4 * np.sqrt(len(events))
    assert np.all(np.diff(events.t) >= 0)


NOISY = EsimConf(sigma_contrast=0.03, sigma_noise=0.02, refractory_us=500, leak_rate_hz=5.0, shot_noise_rate_hz=20.0)


@pytest.mark.parametrize("conf", [CLEAN, NOISY], ids=["clean", "noisy"])
def test_a_run_repeats_exactly(conf):
    rng = np.random.default_rng(0)
    base = rng.random((24, 32))
    times = np.arange(0, 300_001, 10_000)
    frames = [np.clip(np.roll(base, int(t // 30_000), axis=1) * (0.5 + t * 1e-6), 0, 1) for t in times]

    def arrays(c: EsimConf) -> list[list[int]]:
        ev = _run(frames, times, c)
        return [ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()]

    first = arrays(conf)
    assert len(first[0]) > 100 and first == arrays(conf)
    other_seed = arrays(EsimConf(**{**conf.__dict__, "seed": 7}))
    assert (other_seed == first) == (conf is CLEAN)  # the seed matters only when something is random


def test_inputs_are_converted_and_checked():
    gray = np.array([[0, 128, 255]], np.uint8)
    assert to_intensity(gray)[0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 0, 255)
    assert to_intensity(rgb)[0].tolist() == pytest.approx([0.299, 0.114])
    assert to_intensity(np.array([[65535]], np.uint16)).tolist() == [[1.0]]
    for bad in (np.array([[1.5]]), np.array([[np.nan]]), np.zeros((2, 2, 4)), np.zeros(3), np.array([[1]], np.int32)):
        with pytest.raises(ValueError, match="frame"):
            to_intensity(bad)
    sim = EventSimulator((3, 2), CLEAN)
    with pytest.raises(ValueError, match=r"expected \[2, 3\]"):
        sim.feed(np.zeros((3, 2)), 0)
    sim.feed(np.zeros((2, 3)), 5)
    for t in (5, 4):
        with pytest.raises(ValueError, match="not after"):
            sim.feed(np.zeros((2, 3)), t)
    with pytest.raises(ValueError, match="int"):
        sim.feed(np.zeros((2, 3)), 6.0)  # a float time is refused
    with pytest.raises(ValueError, match="fewer timestamps"):
        list(simulate_frames([np.zeros((2, 2))] * 3, [0, 1]))
    with pytest.raises(ValueError, match="more timestamps"):
        list(simulate_frames([np.zeros((2, 2))] * 2, [0, 1, 2]))


def test_conf_is_checked():
    for bad in ({"contrast_pos": 0.0}, {"contrast_neg": -0.1}, {"sigma_contrast": -1.0}, {"refractory_us": -1},
                {"leak_jitter_fraction": 1.0}, {"log_eps": 0.0}, {"shot_noise_rate_hz": -1.0}):
        with pytest.raises(ConfError, match=next(iter(bad))):
            EsimConf(**bad)
    EsimConf(log_eps=0.0, use_log=False)
