"""The ``event-drive`` world kind: the ``drive`` dataset, then every traversal's events at 346 x 260.

``generate_event_drive(conf, out, split=...)`` writes the drive (:mod:`visloc.data.world.drive`: route, poses at
``pose_hz``, frames at ``render_hz``, pseudo-GPS), then simulates each traversal into
``<traversal>/events.h5`` (:mod:`visloc.pipelines.simulate_world`: frames rendered at the adaptive rate of
``events.max_flow_px``, ESIM), then writes ``events.yaml`` (the events conf and per-traversal counts) last.
Every step resumes: the drive by its own record, each event file by the record stored in it. Read the
result with :func:`visloc.events.drive_dataset.read_event_drive`.

The default traversals cover what event cameras are for: two day drives (lateral offsets, speeds), dusk and
night, so that a model trained on day can be tested on night and the reverse.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path

import yaml

from visloc.conf import ConfError, conf_to_dict
from visloc.data.world.base import check_split
from visloc.data.world.drive import DriveFiles, generate_drive
from visloc.data.world.drive_conf import DriveConf, TraversalConf
from visloc.events.simulator import EsimConf
from visloc.events.world_drive import WorldEventsConf
from visloc.io.atomic import atomic_write_text
from visloc.io.jobs import JobSummary
from visloc.pipelines.simulate_world import TraversalSummary, simulate_traversal

logger = logging.getLogger(__name__)
RECORD = "events.yaml"


def _traversals() -> tuple[TraversalConf, ...]:
    return (TraversalConf("day1", "day", 0.0, 1.0), TraversalConf("day2", "day", 0.6, 0.8),
            TraversalConf("dusk1", "dusk", -0.4, 0.9), TraversalConf("night1", "night", 0.3, 1.0))


def _events() -> WorldEventsConf:
    return WorldEventsConf(esim=EsimConf(), max_flow_px=1.0)


@dataclass(frozen=True)
class EventDriveConf(DriveConf):
    """A ``DriveConf`` (route, traversals, rates, camera, GPS origin) and how its traversals become events.

    Attributes:
        traversals: default day1, day2 (0.6 m left, 0.8 x speed), dusk1 (0.4 m right, 0.9 x), night1.
        events: the simulation (``events.max_flow_px`` 1 px by default: up to about 1300 frames rendered per
            second of drive at top speed; 0.5 doubles the cost).
        workers: traversals simulated at once, one process each (not part of any record: any count gives
            the same files).
    """

    traversals: tuple[TraversalConf, ...] = field(default_factory=_traversals)
    events: WorldEventsConf = field(default_factory=_events)
    workers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.workers <= 64:
            raise ConfError(f"EventDriveConf.workers: must be in [1, 64], got {self.workers}")

    @property
    def drive(self) -> DriveConf:
        """The drive part of the conf."""
        return DriveConf(**{f.name: getattr(self, f.name) for f in fields(DriveConf)})


@dataclass(frozen=True)
class EventDriveFiles:
    """What :func:`generate_event_drive` wrote: the drive's files, the event files, the record."""

    drive: DriveFiles
    events: tuple[Path, ...]
    record: Path

    @property
    def summary(self) -> JobSummary:
        """The drive's job summary (its frames; the CLI prints it)."""
        return self.drive.summary


def _simulate(root: Path, name: str, path: Path, conf: WorldEventsConf, progress: bool) -> TraversalSummary:
    return simulate_traversal(root, name, path, conf, progress=progress)


def generate_event_drive(conf: EventDriveConf, out: str | Path, *, split: str,
                         progress: bool = True) -> EventDriveFiles:
    """Generate the drive of ``conf`` for ``split`` into ``out``, then its events (see the module docstring).

    Raises:
        ConfError: a drive conf that cannot make this drive (see ``generate_drive``).
        InputError: ``out`` holds another job, or an event file made with another conf.
    """
    out = Path(out)
    split_ = check_split(split)
    drive = generate_drive(conf.drive, out, split=split_, progress=progress)
    paths = [out / t.name / "events.h5" for t in conf.traversals]
    jobs = [(out, t.name, p, conf.events, progress and conf.workers == 1) for t, p in zip(conf.traversals, paths,
                                                                                       strict=True)]
    if conf.workers == 1:
        summaries = [_simulate(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(conf.workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            summaries = list(pool.map(_simulate, *zip(*jobs, strict=True)))
    rows = []
    for t, s in zip(conf.traversals, summaries, strict=True):
        for line in s.lines():
            logger.info("%s", line)
        row: dict[str, object] = {"name": t.name, "condition": s.condition, "file": f"{t.name}/events.h5"}
        if s.stats is not None:
            row |= {"events": s.stats.events, "frames_rendered": s.stats.frames,
                    "max_flow_px_seen": round(s.stats.flow_checked, 4), "pairs_over_max_flow": s.stats.over_budget,
                    "seconds": round(s.seconds, 1)}
        rows.append(row)
    old = yaml.safe_load((out / RECORD).read_text()) if (out / RECORD).is_file() else None
    if isinstance(old, dict):  # counts of the traversals done by an earlier run stay
        by_name = {r.get("name"): r for r in old.get("traversals", []) if isinstance(r, dict)}
        rows = [by_name.get(r["name"], r) if "events" not in r else r for r in rows]
    record = {"events": conf_to_dict(conf.events), "sensor_size": [conf.width, conf.height], "traversals": rows}
    path = atomic_write_text(out / RECORD, yaml.safe_dump(record, sort_keys=False))
    return EventDriveFiles(drive, tuple(paths), path)


__all__ = ["EventDriveConf", "EventDriveFiles", "generate_event_drive"]
