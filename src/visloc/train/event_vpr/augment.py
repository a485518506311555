"""Training-time augmentation of event windows: mirror, shift, thinning; seeded, never mutating the input.

Event-VPR's training drives have a few hundred places, and a ResNet-34 from random weights learns them by
heart within a few hundred steps (held-out recall falls below the untrained network's). Three cheap
changes to the *events* (before the representation, so that the voxel grid or EST sees them as a sensor
would) make every step see a slightly different world:

- ``mirror``: with probability ``mirror_p`` a query's whole triplet set (query, positive, negatives) is
  mirrored left to right, ``x -> W - 1 - x``. The mirrored query still matches its mirrored positive and
  not its mirrored negatives, so the labels hold; the mirrored street is a new place. Per query, never per
  window (a mirrored positive against an unmirrored query would be a wrong label).
- ``shift_px``: each window is translated by an integer ``(dx, dy)`` drawn uniformly from
  ``[-shift_px, shift_px]``; events leaving the sensor are dropped. A camera mounted a little differently,
  or a lateral offset the drives do not have.
- ``keep_min``: each window keeps a random fraction ``f ~ U[keep_min, 1]`` of its events (independent
  Bernoulli per event), as a less sensitive sensor or a higher contrast threshold would. 1: off.

``augment_triplets`` draws from ``numpy.random.default_rng((seed, step))``, so a resumed run applies the
same augmentation to the same step. Frames: ``x`` columns, ``y`` rows, pixels of the ``(W, H)`` sensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visloc import conf_ranges
from visloc.events.stream import EventStream


@dataclass(frozen=True)
class AugmentConf:
    """What ``augment_triplets`` does (module docstring); the defaults are on, ``enabled: false`` turns all off.

    Attributes:
        enabled: apply any augmentation at all.
        mirror_p: probability that a query's triplet set is mirrored left to right, in ``[0, 1]``.
        shift_px: largest translation of a window along each axis, pixels, ``>= 0``.
        keep_min: smallest fraction of a window's events kept, in ``(0, 1]``.
    """

    enabled: bool = True
    mirror_p: float = 0.5
    shift_px: int = 8
    keep_min: float = 0.7

    def __post_init__(self) -> None:
        conf_ranges.between(self, 0.0, 1.0, "mirror_p", "keep_min")
        conf_ranges.at_least(self, 0, "shift_px")
        conf_ranges.above(self, 0.0, "keep_min")


def transform_window(events: EventStream, mirror: bool = False, dx: int = 0, dy: int = 0, keep: float = 1.0,
                     rng: np.random.Generator | None = None) -> EventStream:
    """A new window: mirrored (``x -> W - 1 - x``), then shifted by ``(dx, dy)`` pixels, then thinned to ``keep``.

    Events shifted outside the ``(W, H)`` sensor are dropped; ``keep < 1`` needs ``rng`` (Bernoulli per
    event). Times and polarities are unchanged, so the result stays sorted; ``events`` is not modified.
    """
    w, h = events.sensor_size
    x = events.x.astype(np.int32)
    y = events.y.astype(np.int32)
    if mirror:
        x = (w - 1) - x
    x, y = x + dx, y + dy
    mask = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    if keep < 1.0:
        if rng is None:
            raise ValueError("transform_window: keep < 1 needs an rng")
        mask &= rng.random(len(x)) < keep
    dtype = events.x.dtype
    return EventStream(events.t[mask].copy(), x[mask].astype(dtype), y[mask].astype(dtype), events.p[mask].copy(),
                       events.sensor_size, events.origin_us)


def augment_triplets(windows: list[EventStream], batch: int, negatives: int, conf: AugmentConf, seed: int,
                     step: int) -> list[EventStream]:
    """Augment a step's windows ``[q (B), p (B), n (B K, query-major)]``; the same list when disabled.

    Args:
        windows: ``B (2 + K)`` windows in the module's order (``EventVPRTrainModule.triplet_batch``).
        batch: ``B``.
        negatives: ``K``.
        conf: the augmentation.
        seed: the run's seed.
        step: the optimiser step (with ``seed``: the draws).
    """
    if len(windows) != batch * (2 + negatives):
        raise ValueError(f"augment_triplets: expected {batch} x (2 + {negatives}) windows, got {len(windows)}")
    if not conf.enabled:
        return windows
    rng = np.random.default_rng((seed, step))
    mirror_query = rng.random(batch) < conf.mirror_p
    owner = np.concatenate([np.arange(batch), np.arange(batch), np.repeat(np.arange(batch), negatives)])
    out = []
    for w, q in zip(windows, owner, strict=True):
        dx, dy = (int(v) for v in rng.integers(-conf.shift_px, conf.shift_px + 1, size=2))
        keep = float(rng.uniform(conf.keep_min, 1.0)) if conf.keep_min < 1.0 else 1.0
        out.append(transform_window(w, bool(mirror_query[q]), dx, dy, keep, rng))
    return out


__all__ = ["AugmentConf", "augment_triplets", "transform_window"]
