"""Events of one world drive traversal into a visloc event file: ``simulate_traversal(root, name, out, conf)``.

The traversal is rendered at the adaptive rate of ``events.world_drive`` and streamed into ``out``
(``events.io.h5.EventWriter``, atomic; ``origin_us = 0`` is the traversal's start, so event times and the
``poses.csv`` times share one clock). The record (conf, drive folder identity, traversal) is stored in the
file's ``visloc_simulator`` attribute: a re-run with the same record skips, another one needs ``overwrite``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.events.io.h5 import EventWriter, check_event_output
from visloc.events.world_drive import ALGORITHM, TraversalEvents, WorldEventsConf, WorldEventSource, read_traversal
from visloc.io.locks import output_lock
from visloc.pipelines.simulate_events import RECORD_ATTR, stored_record


@dataclass
class TraversalSummary:
    """What ``simulate_traversal`` did; ``stats`` is None when it was already done."""

    out: Path
    traversal: str
    condition: str
    stats: TraversalEvents | None
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Summary lines for the CLI."""
        if self.stats is None:
            return [f"events simulate: {self.traversal}: already done (same conf and drive) -> {self.out}"]
        s = self.stats
        return [f"events simulate: {self.traversal} ({self.condition}, {s.duration_us / 1e6:.1f} s): {s.frames} "
                f"frames rendered ({s.frames / max(s.duration_us / 1e6, 1e-9):.0f} per second of drive), "
                f"{s.events} events in {self.seconds:.0f} s -> {self.out}",
                f"  motion between rendered frames: up to {s.flow_checked:.2f} px; {s.over_budget} pairs over "
                f"max_flow_px"]


def _record(root: Path, name: str, conf: WorldEventsConf) -> str:
    world = (root / "world.yaml").read_text()
    return json.dumps({"conf": conf_to_dict(conf), "traversal": name, "drive": world, "algorithm": ALGORITHM},
                      sort_keys=True)


def simulate_traversal(root: str | Path, name: str, out: str | Path, conf: WorldEventsConf | None = None, *,
                       overwrite: bool = False, progress: bool = True) -> TraversalSummary:
    """Simulate traversal ``name`` of the drive folder ``root`` into ``out``; see the module docstring.

    Raises:
        InputError: not a finished drive folder, no such traversal, ``out`` made with another record (and no
            ``overwrite``) or not a visloc event file.
        OutputError: ``out`` exists and is not a visloc event file (``overwrite`` or not).
        OutputLockedError: another job is writing ``out``.
    """
    conf = conf or WorldEventsConf()
    root, out = Path(root), Path(out)
    check_event_output(out)
    with output_lock(out):
        return _simulate(root, name, out, conf, overwrite, progress)


def _simulate(root: Path, name: str, out: Path, conf: WorldEventsConf, overwrite: bool,
              progress: bool) -> TraversalSummary:
    traversal = read_traversal(root, name)
    record = _record(root, name, conf)
    if out.exists() and not overwrite:
        if stored_record(out) == record:
            return TraversalSummary(out, name, traversal.condition, None)
        raise InputError(f"{out}: exists, made with another conf or drive (--overwrite to replace it)")
    start = time.perf_counter()
    source = WorldEventSource(traversal, conf)
    total = int(traversal.t_us[-1] - traversal.t_us[0])
    with EventWriter(out, traversal.size, int(traversal.t_us[0]), attrs={RECORD_ATTR: record}) as writer, \
            tqdm(total=round(total / 1e6, 1), desc=f"events: {name}", unit="s", disable=not progress) as bar:
        done = 0
        for chunk in source.chunks():
            writer.append(chunk)
            now = round(int(chunk.t[-1]) / 1e6, 1) if len(chunk) else done
            if now > done:
                bar.update(now - done)
                done = now
            bar.set_postfix(events=source.stats.events, frames=source.stats.frames, refresh=False)
    if not out.is_file():
        raise InputError(f"{out}: was not written")
    return TraversalSummary(out, name, traversal.condition, source.stats, time.perf_counter() - start)


__all__ = ["TraversalSummary", "simulate_traversal"]
