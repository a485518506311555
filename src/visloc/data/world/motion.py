"""Speed profiles along a path: bounded speed, acceleration and jerk, stops with dwell times, speed caps.

A profile is a sequence of constant-jerk pieces in time, so position ``s(t)`` (metres along the path), speed
``v(t)`` (m/s), acceleration ``a(t)`` (m/s^2) and jerk are exact at any time. Every speed change is a symmetric
S-curve (jerk ``+-j``, acceleration at most ``a``), which travels ``(v0 + v1) / 2 * T`` in its time ``T``.

:func:`plan_profile` takes the path length, the stops (position, dwell) and the speed caps (intervals where the
speed may not exceed a value, e.g. the lateral-acceleration limit of a turn) and returns the time profile that
drives from rest at 0 to rest at the end: in each gap between two constraints it accelerates to the highest
speed that still lets it meet the next one, cruises and slows down; inside a cap interval it holds the cap (or
less where the cap cannot be reached in time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Limits:
    """Motion limits (all > 0).

    Attributes:
        max_speed: m/s.
        max_accel: m/s^2 when speeding up.
        max_decel: m/s^2 when slowing down (a positive number).
        max_jerk: m/s^3.
    """

    max_speed: float
    max_accel: float
    max_decel: float
    max_jerk: float


@dataclass(frozen=True)
class Profile:
    """Constant-jerk pieces: piece ``i`` starts at time ``t0[i]`` with state ``s0, v0, a0`` and has jerk ``j[i]``.

    Attributes:
        t0, s0, v0, a0, j: float64 [P] arrays (seconds, metres, m/s, m/s^2, m/s^3); ``t0`` is non-decreasing.
        duration: end time (seconds); the state is held after it.
        length: the path length reached at ``duration`` (metres).
    """

    t0: np.ndarray
    s0: np.ndarray
    v0: np.ndarray
    a0: np.ndarray
    j: np.ndarray
    duration: float
    length: float

    def sample(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``s, v, a`` (each [N]) at times ``t`` [N] (seconds; clipped to ``[0, duration]``)."""
        t = np.clip(np.asarray(t, np.float64), 0.0, self.duration)
        i = np.clip(np.searchsorted(self.t0, t, side="right") - 1, 0, len(self.t0) - 1)
        dt = t - self.t0[i]
        v0, a0, j = self.v0[i], self.a0[i], self.j[i]
        s = self.s0[i] + v0 * dt + a0 * dt ** 2 / 2 + j * dt ** 3 / 6
        v = v0 + a0 * dt + j * dt ** 2 / 2
        a = a0 + j * dt
        return np.minimum(s, self.length), np.maximum(v, 0.0), a


def _phases(v0: float, v1: float, lim: Limits) -> list[tuple[float, float]]:
    """(jerk, duration) phases of the S-curve from ``v0`` to ``v1``."""
    dv = v1 - v0
    if abs(dv) < 1e-12:
        return []
    a = lim.max_accel if dv > 0 else lim.max_decel
    sgn, j = np.sign(dv), lim.max_jerk
    if abs(dv) >= a * a / j:
        return [(sgn * j, a / j), (0.0, abs(dv) / a - a / j), (-sgn * j, a / j)]
    tp = float(np.sqrt(abs(dv) / j))
    return [(sgn * j, tp), (-sgn * j, tp)]


def transition_distance(v0: float, v1: float, lim: Limits) -> float:
    """Distance (metres) of the S-curve from speed ``v0`` to ``v1``."""
    return 0.5 * (v0 + v1) * sum(d for _, d in _phases(v0, v1, lim))


def _reach(v0: float, gap: float, vcap: float, lim: Limits) -> float:
    """The highest speed <= ``vcap`` that an S-curve from ``v0`` reaches within ``gap`` metres."""
    if transition_distance(v0, vcap, lim) <= gap:
        return vcap
    lo, hi = min(v0, vcap), vcap
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if transition_distance(v0, mid, lim) <= gap else (lo, mid)
    return lo


def _peak(va: float, vb: float, gap: float, lim: Limits) -> float:
    """The highest cruise speed of a gap of ``gap`` metres entered at ``va`` and left at ``vb``."""
    def need(vp: float) -> float:
        return transition_distance(va, vp, lim) + transition_distance(vp, vb, lim)

    lo, hi = max(va, vb), lim.max_speed
    if need(hi) <= gap:
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if need(mid) <= gap else (lo, mid)
    return lo


@dataclass(frozen=True)
class _Constraint:
    start: float
    end: float
    cap: float
    dwell: float


def _constraints(length: float, stops: list[tuple[float, float]], caps: list[tuple[float, float, float]],
                 start_dwell: float, lim: Limits) -> list[_Constraint]:
    items = [_Constraint(0.0, 0.0, 0.0, start_dwell)]
    items += [_Constraint(s, s, 0.0, d) for s, d in stops]
    items += [_Constraint(a, b, min(c, lim.max_speed), 0.0) for a, b, c in caps]
    items.append(_Constraint(length, length, 0.0, 0.0))
    items.sort(key=lambda c: (c.start, c.end))
    for prev, cur in zip(items, items[1:], strict=False):
        if cur.start < prev.end - 1e-9:
            raise ValueError(f"plan_profile: constraints overlap at s = {cur.start:.2f} m")
    return _clear_of_rests(items, lim)


def _clear_of_rests(items: list[_Constraint], lim: Limits) -> list[_Constraint]:
    """Caps next to a rest, shortened to where the S-curves from and to that rest reach their speed.

    A cap starts no earlier than a start from the rest before it reaches its speed, and ends no later than
    where the stop at the rest after it must begin; a cap left with no length becomes a point.

    A cap is held at one speed from its start to its end. One that begins within the S-curve's distance of
    a rest (a route starting on a curve, a stop just before a turn) could only be entered at the speed
    reachable there, close to 0 m/s, and would be held so over its whole length: a crawl, or a duration of
    1e12 s. The S-curve from rest towards the cap's speed stays below it, so the cap still holds over the
    part taken off.
    """
    out = []
    for i, c in enumerate(items):
        if c.cap > 0:
            start, end = c.start, c.end
            if i > 0 and items[i - 1].cap <= 0:
                start = min(max(start, items[i - 1].end + transition_distance(0.0, c.cap, lim)), end)
            if i + 1 < len(items) and items[i + 1].cap <= 0:
                end = max(min(end, items[i + 1].start - transition_distance(c.cap, 0.0, lim)), start)
            c = _Constraint(start, end, c.cap, c.dwell)
        out.append(c)
    return out


def _speeds(items: list[_Constraint], lim: Limits) -> list[float]:
    v = [c.cap for c in items]
    for i in range(1, len(items)):  # forward: reachable from the previous constraint
        v[i] = min(v[i], _reach(v[i - 1], items[i].start - items[i - 1].end, v[i], lim))
    for i in range(len(items) - 2, -1, -1):  # backward: able to slow down for the next one
        v[i] = min(v[i], _reach(v[i + 1], items[i + 1].start - items[i].end, v[i], lim))
    return v


class _Builder:
    """Appends constant-jerk pieces and integrates the state exactly."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float, float, float]] = []
        self.t = self.s = self.v = self.a = 0.0

    def piece(self, j: float, dt: float) -> None:
        if dt <= 0:
            return
        self.rows.append((self.t, self.s, self.v, self.a, j))
        self.s += self.v * dt + self.a * dt ** 2 / 2 + j * dt ** 3 / 6
        self.v += self.a * dt + j * dt ** 2 / 2
        self.a += j * dt
        self.t += dt
        if abs(self.a) < 1e-9:
            self.a = 0.0
        self.v = max(self.v, 0.0)

    def ramp(self, v1: float, lim: Limits) -> None:
        for j, dt in _phases(self.v, v1, lim):
            self.piece(j, dt)
        self.v, self.a = v1, 0.0  # remove rounding drift at the end of each S-curve

    def hold(self, dist: float) -> None:
        if dist > 1e-12 and self.v > 0:
            self.piece(0.0, dist / self.v)


def plan_profile(length: float, stops: list[tuple[float, float]], caps: list[tuple[float, float, float]],
                 lim: Limits, start_dwell: float = 0.0, end_dwell: float = 0.0) -> Profile:
    """Plan the time profile that drives ``length`` metres from rest to rest.

    Args:
        length: path length (metres, > 0).
        stops: (position, dwell seconds) where the vehicle comes to rest, strictly inside ``(0, length)``.
        caps: (start, end, max speed) intervals along the path (metres, m/s > 0), disjoint, not containing stops.
        lim: speed, acceleration and jerk limits.
        start_dwell: seconds at rest before starting.
        end_dwell: seconds at rest after arriving.

    Returns:
        The profile; its speed never exceeds ``lim.max_speed`` or a cap, its acceleration stays within
        ``[-max_decel, max_accel]`` and its jerk within ``+-max_jerk``.
    """
    if length <= 0:
        raise ValueError(f"plan_profile: length must be > 0, got {length}")
    items = _constraints(length, stops, caps, start_dwell, lim)
    v = _speeds(items, lim)
    b = _Builder()
    for i, c in enumerate(items):
        if c.dwell > 0:
            b.piece(0.0, c.dwell)
        b.hold(c.end - c.start)
        if i + 1 == len(items):
            break
        nxt = items[i + 1]
        gap = nxt.start - c.end
        vp = _peak(v[i], v[i + 1], gap, lim)
        d_up, d_down = transition_distance(v[i], vp, lim), transition_distance(vp, v[i + 1], lim)
        b.ramp(vp, lim)
        b.hold(gap - d_up - d_down)
        b.ramp(v[i + 1], lim)
        b.s = nxt.start  # remove drift: the next constraint starts exactly where it is placed
    if end_dwell > 0:
        b.piece(0.0, end_dwell)
    b.rows.append((b.t, length, 0.0, 0.0, 0.0))
    cols = np.array(b.rows, dtype=np.float64).T
    return Profile(cols[0], cols[1], cols[2], cols[3], cols[4], float(b.t), float(length))
