"""An ESIM-style event simulator: intensity frames with timestamps -> ``EventStream`` chunks.

The algorithm is ESIM's (Rebecq et al., CoRL 2018; uzh-rpg/rpg_esim ``event_simulator.cpp``, MIT),
vectorised over pixels with numpy, with v2e's (SensorsINI/v2e, MIT) threshold mismatch, leak and
shot noise as options:

- brightness ``L = log(log_eps + I)`` (``use_log``; else ``L = I``), ``I`` in ``[0, 1]``;
- each pixel keeps a reference level ``ref``, set to ``L`` of the first frame (which gives no events);
- between two frames ``L`` is taken to vary linearly. An interval whose ``|L1 - L0| <= 1e-6`` (ESIM's
  tolerance) gives nothing; otherwise its polarity is ``sign(L1 - L0)`` and every level
  ``ref + k * pol * C`` (``k = 1, 2, ...``) that lies in ``(L0, L1]`` (in the direction of ``pol``) is
  one event, stamped by linear interpolation ``t0 + (level - L0) / (L1 - L0) * (t1 - t0)``, rounded to
  the nearest µs; ``ref`` moves to the last level crossed. A ramp through ``n * C`` gives ``n``
  events, several per interval when the change is larger than ``C``;
- ``C`` is ``contrast_pos`` or ``contrast_neg`` with a per-pixel mismatch ``N(0, sigma_contrast)``
  drawn once at construction (v2e), plus, when ``sigma_noise > 0``, a per-pixel ``N(0, sigma_noise)``
  offset drawn again each time the pixel crosses a level; thresholds are floored at 0.01 (v2e's floor;
  it also keeps ``C > 0``);
- refractory period (ESIM's rule): an event less than ``refractory_us`` after the previous *emitted*
  event of its pixel (comparing the µs stamps) is dropped, and the reference still moves past its
  level. An event exactly ``refractory_us`` later is kept. (v2e differs on both counts: it keeps only
  events strictly later than the period, and a dropped event does not move its reference.)

Where this departs from ESIM: ESIM draws the threshold noise once per pixel per frame *interval*, and
its loop stops at the first level that is not inside the interval. When a draw is smaller than the
change already made since the last event, the level lies behind the interval's start, and the pixel
emits nothing for the rest of a monotonic ramp: with ``C = 0.2``, ``sigma = 0.05`` and 200 frames over
a ramp of 2.0 (10 crossings), ESIM's loop gives 1.98 events per pixel on average, and 70 % of pixels
stop after at most 2. Firing such overdue levels at the interval's start instead gives 1.53 times the
nominal count (each interval is a new chance of a small draw). Both depend on the frame rate. A draw
per crossing is frame-rate independent (the next level is fixed from one event to the next) and gives
``change / E[C]`` events; it is what ESIM does whenever an interval holds one crossing. Levels behind
the interval's start can still arise from shot noise moving a reference; they fire at the start.

Noise (``sim_noise``, v2e's models): leak lowers each reference at ``leak_rate_hz`` thresholds per
second (a per-pixel log-normal rate spread, a per-interval jitter), which is exactly a linear ramp added
to ``L`` inside each interval, so leak events are interpolated like signal events. Shot noise adds
Poisson ON and OFF events at v2e's intensity-dependent rates, at uniform times in the interval; each
moves its pixel's reference by its threshold (as in v2e) after the interval's signal crossings. Both
pass the refractory filter. Every random draw comes from the conf's ``seed`` (one generator per
source: mismatch, leak, per-interval noise, shot noise), so a run repeats exactly, and switching one
noise source on does not change the draws of another.

Output order: by time; events with equal stamps in pixel order (``y * W + x``), then in the order the
pixel produced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.events.sim_noise import LeakModel, ShotNoiseModel, ThresholdNoise
from visloc.events.stream import EventStream
from visloc.utils.image_ops import LUMA_WEIGHTS

#: ESIM's tolerance: an interval whose brightness changes by no more than this gives no events
TOLERANCE = 1e-6
#: the smallest contrast threshold (v2e clamps its mismatched thresholds here)
MIN_CONTRAST = 0.01
#: "no event yet" in the per-pixel time of the last emitted event (far enough from int64's end that
#: ``t - NEVER`` cannot overflow)
NEVER = -(2**62)


@dataclass(frozen=True)
class EsimConf:
    """The simulated sensor; defaults from v2e's command line and ESIM's example (``research/event-vpr.md`` 7).

    Attributes:
        contrast_pos: ON threshold ``C+`` in log-intensity units (``ln``).
        contrast_neg: OFF threshold ``C-`` (positive number).
        sigma_contrast: std of the per-pixel threshold mismatch, drawn once (v2e ``sigma_thres``).
        sigma_noise: std of a per-pixel threshold offset drawn again at every crossing (ESIM's
            ``sigma_Cp/Cm``, which it draws per frame interval; see the module docstring).
        refractory_us: refractory period (µs); 0 keeps every event.
        log_eps: ``L = log(log_eps + I)``.
        use_log: log intensity (``False``: ``L = I``, linear).
        leak_rate_hz: leak events per pixel per second (v2e); 0 disables.
        leak_jitter_fraction: per-interval relative jitter of the leak rate (v2e ``leak_jitter_fraction``).
        leak_rate_cov_decades: spread (decades, 1 sigma) of the per-pixel leak rate (v2e ``noise_rate_cov_decades``).
        shot_noise_rate_hz: shot-noise events per pixel per second, ON and OFF together, at the darkest
            intensity (v2e); 0 disables.
        seed: seeds every random draw.
    """

    contrast_pos: float = 0.2
    contrast_neg: float = 0.2
    sigma_contrast: float = 0.03
    sigma_noise: float = 0.0
    refractory_us: int = 500
    log_eps: float = 1e-3
    use_log: bool = True
    leak_rate_hz: float = 0.01
    leak_jitter_fraction: float = 0.1
    leak_rate_cov_decades: float = 0.1
    shot_noise_rate_hz: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("contrast_pos", "contrast_neg"):
            if not getattr(self, name) >= MIN_CONTRAST:
                raise ConfError(f"EsimConf.{name}: must be >= {MIN_CONTRAST}, got {getattr(self, name)}")
        for name in ("sigma_contrast", "sigma_noise", "refractory_us", "leak_rate_hz", "leak_rate_cov_decades",
                     "shot_noise_rate_hz"):
            if not getattr(self, name) >= 0:
                raise ConfError(f"EsimConf.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.leak_jitter_fraction < 1:
            raise ConfError(f"EsimConf.leak_jitter_fraction: must be in [0, 1), got {self.leak_jitter_fraction}")
        if self.use_log and not self.log_eps > 0:
            raise ConfError(f"EsimConf.log_eps: must be > 0 with use_log, got {self.log_eps}")
        # the checks above let inf through: an infinite leak or shot-noise rate asks for infinitely many events
        ranges.at_least(self, MIN_CONTRAST, "contrast_pos", "contrast_neg")
        ranges.at_least(self, 0, "sigma_contrast", "sigma_noise", "refractory_us", "leak_rate_hz",
                        "leak_rate_cov_decades", "shot_noise_rate_hz")
        if self.use_log:
            ranges.above(self, 0, "log_eps")


def to_intensity(frame: np.ndarray) -> np.ndarray:
    """A frame -> ``[H, W]`` float64 intensity in ``[0, 1]``.

    Args:
        frame: ``[H, W]`` or ``[H, W, 3]`` RGB: uint8 (``/ 255``), uint16 (``/ 65535``) or float in
            ``[0, 1]``. RGB becomes luminance with ITU-R BT.601 weights (0.299, 0.587, 0.114), as
            OpenCV's ``COLOR_RGB2GRAY``.

    Raises:
        ValueError: another shape or dtype, or float values that are not finite or outside ``[0, 1]``.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise ValueError(f"frame: expected [H, W] or [H, W, 3] numpy array, got "
                         f"{type(frame).__name__}{getattr(frame, 'shape', '')}")
    if frame.dtype == np.uint8:
        img = frame.astype(np.float64) / 255.0
    elif frame.dtype == np.uint16:
        img = frame.astype(np.float64) / 65535.0
    elif np.issubdtype(frame.dtype, np.floating):
        img = frame.astype(np.float64)
        if not np.all(np.isfinite(img)) or img.min() < 0 or img.max() > 1:
            raise ValueError("frame: float intensities must be finite and in [0, 1]")
    else:
        raise ValueError(f"frame: expected uint8, uint16 or float, got {frame.dtype}")
    return img @ np.asarray(LUMA_WEIGHTS, np.float64) if img.ndim == 3 else img


@dataclass(frozen=True)
class _Crossings:
    """Events of one interval, pixel-major (each pixel's in time order): flat pixel index, µs stamp, polarity."""

    pix: np.ndarray
    t: np.ndarray
    p: np.ndarray


def _signal_crossings(s0: np.ndarray, s1: np.ndarray, ref: np.ndarray, c_pos: np.ndarray, c_neg: np.ndarray,
                      t0_us: int, dt_us: int) -> tuple[_Crossings, np.ndarray]:
    """The threshold crossings of ``s0 -> s1`` (``[P]`` each) with fixed ``[P]`` thresholds, and the new references.

    Closed form: the levels ``k * C`` (``k >= 1``) from the reference up to ``u1``; those not beyond
    ``u0`` (overdue) are stamped ``t0_us``. See the module docstring for the rule.
    """
    d = s1 - s0
    active = np.flatnonzero(np.abs(d) > TOLERANCE)
    pol = np.where(d[active] >= 0, 1.0, -1.0)
    c = np.where(pol > 0, c_pos[active], c_neg[active])
    u0 = pol * (s0[active] - ref[active])  # distances from the reference, in the interval's direction
    u1 = pol * (s1[active] - ref[active])
    n = np.maximum(np.floor(u1 / c), 0).astype(np.int64)
    new_ref = ref.copy()
    new_ref[active] += pol * c * n
    fired = n > 0
    idx, n, pol, c, u0, u1 = active[fired], n[fired], pol[fired], c[fired], u0[fired], u1[fired]
    total = int(n.sum())
    owner = np.repeat(np.arange(len(idx)), n)
    k = np.arange(1, total + 1) - np.repeat(np.cumsum(n) - n, n)
    frac = np.clip((k * c[owner] - u0[owner]) / (u1[owner] - u0[owner]), 0.0, 1.0)
    t = t0_us + np.rint(frac * dt_us).astype(np.int64)
    return _Crossings(idx[owner], t, pol[owner].astype(np.int8)), new_ref


def _noisy_crossings(s0: np.ndarray, s1: np.ndarray, ref: np.ndarray, noise: ThresholdNoise, t0_us: int,
                     dt_us: int) -> tuple[_Crossings, np.ndarray]:
    """As ``_signal_crossings``, with the thresholds of ``noise``, drawn again after each crossing.

    One vectorised step per crossing rank: the pixels whose next level lies within ``u1`` fire, move
    their position to that level and draw new offsets; the others are done.
    """
    d = s1 - s0
    idx = np.flatnonzero(np.abs(d) > TOLERANCE)
    pol = np.where(d[idx] >= 0, 1.0, -1.0)
    u0, u1 = pol * (s0[idx] - ref[idx]), pol * (s1[idx] - ref[idx])
    base, at = ref[idx], np.zeros(len(idx))
    new_ref = ref.copy()
    parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8))]
    while len(idx):
        c_pos, c_neg = noise.thresholds(idx)
        level = at + np.where(pol > 0, c_pos, c_neg)
        fire = level <= u1
        idx, pol, u0, u1, base, at = idx[fire], pol[fire], u0[fire], u1[fire], base[fire], level[fire]
        frac = np.clip((at - u0) / (u1 - u0), 0.0, 1.0)
        parts.append((idx, t0_us + np.rint(frac * dt_us).astype(np.int64), pol.astype(np.int8)))
        new_ref[idx] = base + pol * at
        noise.redraw(idx)
    pix, t, p = (np.concatenate([part[i] for part in parts]) for i in range(3))
    order = np.lexsort((np.arange(len(pix)), pix))  # pixel-major; a pixel's crossings in rank (= time) order
    return _Crossings(pix[order], t[order], p[order]), new_ref


def _refractory(pix: np.ndarray, t: np.ndarray, last_us: np.ndarray, period_us: int) -> np.ndarray:
    """Keep-mask of events sorted by (pixel, time); updates ``last_us`` (``[P]``, µs of each pixel's last kept event).

    An event is kept when ``t - last_us[pixel] >= period_us``; events of one pixel are taken in order,
    so the ``r``-th event of every pixel is decided in one vectorised step.
    """
    n = len(pix)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    starts = np.flatnonzero(np.r_[True, pix[1:] != pix[:-1]])
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    order = np.argsort(rank, kind="stable")
    pos = 0
    for count in np.bincount(rank):
        sel = order[pos:pos + count]
        pos += count
        p, tt = pix[sel], t[sel]
        ok = tt - last_us[p] >= period_us
        keep[sel] = ok
        last_us[p[ok]] = tt[ok]
    return keep


class EventSimulator:
    """Stateful ESIM: ``feed`` frames in time order, get the events since the previous frame.

    Args:
        sensor_size: ``(W, H)`` pixels; every frame is ``[H, W]`` (or ``[H, W, 3]``).
        conf: the sensor model.

    The per-pixel thresholds (mismatch) are drawn here, once. Events are stamped in µs relative to
    the first frame's time (the chunks' ``origin_us``), so chunks concatenate into one stream.
    """

    def __init__(self, sensor_size: tuple[int, int], conf: EsimConf | None = None) -> None:
        w, h = sensor_size
        if not all(isinstance(v, (int, np.integer)) and 1 <= v <= np.iinfo(np.uint16).max for v in (w, h)):
            raise ValueError(f"sensor_size: expected (W, H) ints in [1, 65535], got {sensor_size!r}")
        self.sensor_size = (int(w), int(h))
        self.conf = conf or EsimConf()
        seeds = np.random.SeedSequence(self.conf.seed).spawn(4)
        mismatch, leak, noise, shot = (np.random.default_rng(s) for s in seeds)
        n = int(w) * int(h)
        self._c_pos = self._draw_thresholds(mismatch, self.conf.contrast_pos, n)
        self._c_neg = self._draw_thresholds(mismatch, self.conf.contrast_neg, n)
        self._noise = ThresholdNoise(self._c_pos, self._c_neg, self.conf.sigma_noise, MIN_CONTRAST, noise) \
            if self.conf.sigma_noise > 0 else None
        self._leak = LeakModel(self.conf, self._c_pos, leak) if self.conf.leak_rate_hz > 0 else None
        self._shot = ShotNoiseModel(self.conf, self._c_pos, self._c_neg, shot) if self.conf.shot_noise_rate_hz > 0 \
            else None
        self._last_emitted = np.full(n, NEVER, dtype=np.int64)
        self._s = np.empty(0)  # brightness (+ cumulative leak) at the last frame
        self._ref = np.empty(0)
        self._offset = np.zeros(n)  # cumulative leak, added to L
        self._t_us: int | None = None
        self._origin_us = 0

    def _draw_thresholds(self, rng: np.random.Generator, nominal: float, n: int) -> np.ndarray:
        if self.conf.sigma_contrast == 0:
            return np.full(n, nominal)
        return np.maximum(rng.normal(nominal, self.conf.sigma_contrast, n), MIN_CONTRAST)

    @property
    def thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(C+, C-)``, each ``[H, W]`` float64 (copies): the per-pixel thresholds before per-crossing noise."""
        w, h = self.sensor_size
        return self._c_pos.reshape(h, w).copy(), self._c_neg.reshape(h, w).copy()

    @property
    def initialised(self) -> bool:
        """Whether a first frame has set the reference levels."""
        return self._t_us is not None

    def _brightness(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(I, L)`` flat ``[P]`` float64 of a frame (checked against the sensor size)."""
        w, h = self.sensor_size
        if not isinstance(frame, np.ndarray) or frame.shape[:2] != (h, w):
            raise ValueError(f"frame: expected [{h}, {w}] (sensor {w}x{h}), got {getattr(frame, 'shape', frame)!r}")
        img = to_intensity(frame).ravel()
        return img, (np.log(self.conf.log_eps + img) if self.conf.use_log else img)

    def _empty(self) -> EventStream:
        return EventStream(np.zeros(0, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.uint16),
                           np.zeros(0, np.int8), self.sensor_size, self._origin_us)

    def feed(self, frame: np.ndarray, t_us: int) -> EventStream:
        """Add the frame taken at ``t_us`` (int µs, after the previous frame's); return the events since then.

        The first frame sets the reference levels and the chunks' ``origin_us``; it returns no events.

        Returns:
            the events of ``(t_prev, t_us]`` (stamps may equal ``t_prev`` after rounding), sorted, with
            ``t`` relative to the first frame's time.
        """
        if not isinstance(t_us, (int, np.integer)) or isinstance(t_us, bool):
            raise ValueError(f"t_us: expected an int (µs), got {t_us!r}")
        t_us = int(t_us)
        img, level = self._brightness(frame)
        if self._t_us is None:
            self._s, self._ref, self._t_us, self._origin_us = level, level.copy(), t_us, t_us
            return self._empty()
        if t_us <= self._t_us:
            raise ValueError(f"t_us: {t_us} is not after the previous frame's {self._t_us}")
        t0, dt = self._t_us - self._origin_us, t_us - self._t_us
        if self._leak is not None:
            self._offset += self._leak.step(dt)
        s1 = level + self._offset
        if self._noise is None:
            ev, self._ref = _signal_crossings(self._s, s1, self._ref, self._c_pos, self._c_neg, t0, dt)
        else:
            ev, self._ref = _noisy_crossings(self._s, s1, self._ref, self._noise, t0, dt)
        pix, t, p = ev.pix, ev.t, ev.p
        if self._shot is not None:
            shot = self._shot.step(img, t0, dt)
            self._ref += shot.ref_shift
            if self._noise is not None:
                self._noise.redraw(np.unique(shot.pix))
            pix, t, p = (np.concatenate([a, b]) for a, b in ((pix, shot.pix), (t, shot.t), (p, shot.p)))
            order = np.lexsort((np.arange(len(pix)), t, pix))  # by pixel, then time, then signal before shot
            pix, t, p = pix[order], t[order], p[order]
        if self.conf.refractory_us > 0:
            keep = _refractory(pix, t, self._last_emitted, self.conf.refractory_us)
            pix, t, p = pix[keep], t[keep], p[keep]
        self._s, self._t_us = s1, t_us
        order = np.argsort(t, kind="stable")  # ties stay in pixel order
        pix, t, p = pix[order], t[order], p[order]
        w = self.sensor_size[0]
        return EventStream(t, (pix % w).astype(np.uint16), (pix // w).astype(np.uint16), p, self.sensor_size,
                           self._origin_us)


def simulate_frames(frames: Iterable[np.ndarray], timestamps_us: Iterable[int], conf: EsimConf | None = None,
                    sensor_size: tuple[int, int] | None = None) -> Iterator[EventStream]:
    """Events of a frame sequence: one chunk per frame after the first (possibly empty), in time order.

    Args:
        frames: ``[H, W]`` (or RGB ``[H, W, 3]``) frames, see ``to_intensity``.
        timestamps_us: one strictly increasing int µs time per frame.
        conf: the sensor model.
        sensor_size: ``(W, H)``; default: the first frame's.

    Raises:
        ValueError: more frames than timestamps or the reverse, a frame of another size, times not increasing.
    """
    sim: EventSimulator | None = None
    stamps = iter(timestamps_us)
    for i, frame in enumerate(frames):
        t = next(stamps, None)
        if t is None:
            raise ValueError(f"timestamps_us: fewer timestamps than frames ({i})")
        if sim is None:
            if sensor_size is None:
                shape = getattr(frame, "shape", ())
                if len(shape) < 2:
                    raise ValueError(f"frame: expected [H, W] or [H, W, 3], got {shape}")
                sensor_size = (int(shape[1]), int(shape[0]))
            sim = EventSimulator(sensor_size, conf)
            sim.feed(frame, t)
            continue
        yield sim.feed(frame, t)
    if next(stamps, None) is not None:
        raise ValueError("timestamps_us: more timestamps than frames")
