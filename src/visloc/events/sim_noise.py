"""The simulator's noise sources: threshold noise, and leak and shot noise after v2e (SensorsINI/v2e, MIT).

- ``ThresholdNoise``: a per-pixel ``N(0, sigma_noise)`` offset on each threshold, drawn at the start
  and drawn again at every level crossing of the pixel (the comparator's reset), so each crossing
  has its own threshold. ESIM (``sigma_Cp`` / ``sigma_Cm``) draws one per pixel per frame interval
  instead; see ``simulator`` for why that is not followed.
- ``LeakModel``: the reset switch's junction leakage slowly lowers each pixel's reference, which makes
  ON events at about ``leak_rate_hz`` per pixel on a static scene. Per interval of ``dt`` seconds the
  reference drops by ``dt * leak_rate_hz * rate[pixel] * (1 - jitter * N(0, 1)) * C+[pixel]``, with
  ``rate`` a per-pixel log-normal spread ``10 ** (cov_decades * N(0, 1))`` drawn once (v2e
  ``subtract_leak_current`` and ``noise_rate_array``). The simulator adds the drop to the brightness
  instead (the same difference ``L - ref``), spread linearly over the interval, so leak crossings are
  interpolated like signal crossings.
- ``ShotNoiseModel``: photon shot noise as random ON and OFF events, each at the rate
  ``(shot_noise_rate_hz / 2) * (1 - 0.75 * i) * (C_nominal / C[pixel])`` Hz, with ``i = (255 I + 20) /
  275`` the rescaled intensity of the interval's later frame: the full rate in the dark, a quarter of it
  at white, higher for pixels with low thresholds (v2e ``SHOT_NOISE_INTEN_FACTOR = 0.25``,
  ``rescale_intensity_frame``, ``pos_thres_pre_prob``). v2e draws a Bernoulli per pixel per sub-step;
  this draws its continuous-time limit, a Poisson count per pixel per interval at uniform times. As in
  v2e, each shot event moves its pixel's reference by its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from visloc.events.simulator import EsimConf

#: v2e's ratio of the shot-noise rate at white to the rate in the dark
SHOT_NOISE_INTEN_FACTOR = 0.25


class ThresholdNoise:
    """The current noisy thresholds of every pixel; ``redraw`` after a pixel crosses a level.

    Args:
        c_pos: ``[P]`` per-pixel ON thresholds (mismatch included); ``c_neg``: OFF thresholds.
        sigma: std of the offsets; ``floor``: the smallest threshold.
        rng: draws the first offsets here, then at each ``redraw``.
    """

    def __init__(self, c_pos: np.ndarray, c_neg: np.ndarray, sigma: float, floor: float,
                 rng: np.random.Generator) -> None:
        self.c_pos, self.c_neg, self.sigma, self.floor, self.rng = c_pos, c_neg, sigma, floor, rng
        self.off_pos = rng.normal(0.0, sigma, len(c_pos))
        self.off_neg = rng.normal(0.0, sigma, len(c_neg))

    def thresholds(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(C+, C-)`` now, of the pixels ``idx`` (flat indices)."""
        return (np.maximum(self.c_pos[idx] + self.off_pos[idx], self.floor),
                np.maximum(self.c_neg[idx] + self.off_neg[idx], self.floor))

    def redraw(self, idx: np.ndarray) -> None:
        """New offsets for the pixels ``idx`` (distinct flat indices), which just crossed a level."""
        self.off_pos[idx] = self.rng.normal(0.0, self.sigma, len(idx))
        self.off_neg[idx] = self.rng.normal(0.0, self.sigma, len(idx))


class LeakModel:
    """Leak as a per-pixel brightness offset per interval.

    Args:
        conf: ``leak_rate_hz``, ``leak_jitter_fraction``, ``leak_rate_cov_decades``.
        c_pos: ``[P]`` per-pixel ON thresholds.
        rng: draws the per-pixel rates here, and the jitter at each step.
    """

    def __init__(self, conf: EsimConf, c_pos: np.ndarray, rng: np.random.Generator) -> None:
        self.rate_hz = conf.leak_rate_hz * 10.0 ** (conf.leak_rate_cov_decades * rng.standard_normal(len(c_pos)))
        self.jitter = conf.leak_jitter_fraction
        self.c_pos = c_pos
        self.rng = rng

    def step(self, dt_us: int) -> np.ndarray:
        """``[P]`` leak of an interval of ``dt_us`` µs, in log-intensity units."""
        jitter = 1.0 - self.jitter * self.rng.standard_normal(len(self.c_pos))
        return dt_us * 1e-6 * self.rate_hz * jitter * self.c_pos


@dataclass(frozen=True)
class ShotEvents:
    """Shot-noise events of one interval (flat pixel index, µs stamp, polarity) and ``[P]`` reference shifts."""

    pix: np.ndarray
    t: np.ndarray
    p: np.ndarray
    ref_shift: np.ndarray


class ShotNoiseModel:
    """Poisson ON and OFF events at v2e's rates.

    Args:
        conf: ``shot_noise_rate_hz``, nominal ``contrast_pos`` / ``contrast_neg``.
        c_pos: ``[P]`` per-pixel ON thresholds; ``c_neg``: OFF thresholds.
        rng: draws the counts and times at each step.
    """

    def __init__(self, conf: EsimConf, c_pos: np.ndarray, c_neg: np.ndarray, rng: np.random.Generator) -> None:
        self.half_rate_hz = conf.shot_noise_rate_hz / 2
        self.gain_on = conf.contrast_pos / c_pos
        self.gain_off = conf.contrast_neg / c_neg
        self.c_pos, self.c_neg = c_pos, c_neg
        self.rng = rng

    def step(self, intensity: np.ndarray, t0_us: int, dt_us: int) -> ShotEvents:
        """Events of ``[t0_us, t0_us + dt_us]`` given ``[P]`` intensities in ``[0, 1]`` of the later frame."""
        inten01 = (255.0 * intensity + 20.0) / 275.0
        base = self.half_rate_hz * dt_us * 1e-6 * ((SHOT_NOISE_INTEN_FACTOR - 1.0) * inten01 + 1.0)
        n_on = self.rng.poisson(base * self.gain_on)
        n_off = self.rng.poisson(base * self.gain_off)
        pix = np.concatenate([np.repeat(np.arange(len(n_on)), n_on), np.repeat(np.arange(len(n_off)), n_off)])
        t = t0_us + np.rint(self.rng.random(len(pix)) * dt_us).astype(np.int64)
        p = np.concatenate([np.ones(int(n_on.sum()), np.int8), -np.ones(int(n_off.sum()), np.int8)])
        return ShotEvents(pix, t, p, n_on * self.c_pos - n_off * self.c_neg)
