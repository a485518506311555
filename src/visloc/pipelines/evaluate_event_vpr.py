"""``visloc eval event-vpr``: an Event-VPR model across traversals of one event drive, and frame baselines.

``evaluate_event_vpr(model, database, queries)`` takes traversal folders of one event drive folder
(``events.drive_dataset``: ``ROOT/<traversal>/events.h5``): the places of each traversal (``PlaceWindows``:
one every ``stride_m`` metres of travel, its window the events before it), the model's descriptor of every
window, exact L2 neighbours of each query place among the database places, and recall@N with positives within
25 m (``eval.event_vpr``) per query traversal and per condition, beside the expected recall of a random ranking
(``chance``: on a route not much longer than 50 m most places are positives). Frame baselines (``pipelines.frame_vpr``)
describe each place's nearest rendered frame and are scored on the same places and positions.

The database and the queries are different traversals (never windows of one traversal split in two, which
are milliseconds apart and make recall trivial). Positions are the drive's world ENU metres.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.eval.event_vpr import DescribedPlaces, RecallProtocol, RecallRow, chance_rows, format_table, recall_rows
from visloc.events.drive_dataset import EventDrive, EventTraversal, Places, PlaceWindows, read_event_drive
from visloc.events.vpr import EventVPRWindows, build_event_vpr
from visloc.io.atomic import atomic_write_text
from visloc.models.event_vpr import SHIPPED, EventVPRConf
from visloc.pipelines.common import pick_device
from visloc.pipelines.frame_vpr import FrameMethod, build_frame_extractor, describe_frames, nearest_frames
from visloc.weights.checkpoint import build_model, load_model_record
from visloc.weights.records import resolve_weights

logger = logging.getLogger(__name__)
EVENTS = "events"


@dataclass(frozen=True)
class EventVPRReport:
    """Recall tables of an Event-VPR model and of the frame baselines on one drive's traversals.

    Attributes:
        drive, split: the event drive folder and its split (``test`` for a held-out evaluation).
        database, queries: the database traversal and the query traversals.
        model: the checkpoint.
        windows, protocol: the places and windows, the positives and cut-offs.
        num_places: places per traversal.
        rows: ``chance`` rows (a random ranking's expected recall), ``events`` rows, then each frame baseline's
            (``eval.event_vpr.recall_rows``).
        frames: per frame baseline, its extractor, overrides and the largest place-to-frame time offset (µs).
        skipped: one line per frame baseline that could not run.
    """

    drive: Path
    split: str
    database: str
    queries: tuple[str, ...]
    model: Path
    windows: PlaceWindows
    protocol: RecallProtocol
    num_places: dict[str, int]
    rows: tuple[RecallRow, ...]
    frames: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def header(self) -> str:
        """One line: drive, split, database, queries, places, radius."""
        places = ", ".join(f"{k} {v}" for k, v in self.num_places.items())
        return (f"event-vpr on {self.drive} ({self.split} split): database {self.database}, queries "
                f"{', '.join(self.queries)}; places {places} (every {self.windows.stride_m:g} m); positives within "
                f"{self.protocol.radius_m:g} m")

    def text(self) -> str:
        """The header, the table (recall in percent), a note when the split is not ``test``, the skipped lines."""
        lines = [self.header(), format_table(self.rows, self.protocol.ns)]
        if self.split != "test":
            lines.append(f"note: a {self.split}-split drive, not a held-out evaluation (make one with --split test)")
        return "\n".join(lines + list(self.skipped))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (fractions, ``nan`` as ``None``)."""
        return {"drive": str(self.drive), "split": self.split, "database": self.database,
                "queries": list(self.queries), "model": str(self.model), "windows": conf_to_dict(self.windows),
                "protocol": conf_to_dict(self.protocol), "num_places": self.num_places,
                "frames": self.frames, "skipped": list(self.skipped), "rows": [r.to_json() for r in self.rows]}

    def write(self, path: str | Path) -> Path:
        """Write the JSON report atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))


def resolve_traversals(database: str | Path, queries: Sequence[str | Path]) -> tuple[EventDrive, str, tuple[str, ...]]:
    """The drive of the traversal folders ``database`` and ``queries`` (``ROOT/<name>``) and their names.

    Raises:
        InputError: a folder is missing or has no events, the folders are not of one drive, a query is the
            database traversal or is given twice, or no query is given.
    """
    db = Path(database)
    qs = [Path(q) for q in queries]
    if not qs:
        raise InputError("give at least one query traversal (--queries ROOT/NAME)")
    for p in (db, *qs):
        if not p.is_dir():
            raise InputError(f"{p}: no such traversal folder (expected ROOT/NAME of an event drive)")
    root = db.resolve().parent
    for q in qs:
        if q.resolve() == db.resolve():
            raise InputError(f"{q}: the database traversal itself; queries must come from another traversal")
        if q.resolve().parent != root:
            raise InputError(f"{q}: not a traversal of {root} (database and queries must be traversals of one drive)")
    names = [q.resolve().name for q in qs]
    if len(set(names)) != len(names):
        raise InputError(f"query traversals given twice: {', '.join(names)}")
    drive = read_event_drive(root)
    for name in (db.resolve().name, *names):
        drive[name]  # noqa: B018 - raises a one-line InputError for a folder without events
    return drive, db.resolve().name, tuple(names)


def load_event_vpr(path: str | Path | None = None) -> EventVPRWindows:
    """The ``event-vpr`` checkpoint ``path`` (``weights.checkpoint.save_model``), in eval mode.

    Args:
        path: a checkpoint; None: the shipped ``event-vpr-world`` (``SHIPPED``, sha256 checked).

    Raises:
        WeightsError: missing or corrupt file, another model, or a state dict that does not fit its conf.
    """
    p = resolve_weights(SHIPPED, path)
    return build_model(load_model_record(p, "event-vpr"), EventVPRConf, lambda c: build_event_vpr(c))


def _places(traversal: EventTraversal, windows: PlaceWindows) -> Places:
    places = traversal.places(windows)
    if len(places) == 0:
        raise InputError(f"{traversal.events}: no place with a full window (fewer events than one window, "
                         f"or a route shorter than stride_m)")
    return places


def describe_events(model: EventVPRWindows, traversal: EventTraversal, places: Places, *, batch_size: int = 8,
                    progress: bool = False) -> np.ndarray:
    """The model's descriptors ``[P, D]`` float32 of the windows of ``places``, in batches of ``batch_size``."""
    out = []
    for i in tqdm(range(0, len(places), batch_size), desc=f"events: {traversal.name}", disable=not progress,
                  unit="batch"):
        windows = [traversal.read(places, j) for j in range(i, min(i + batch_size, len(places)))]
        with torch.inference_mode():
            out.append(model(windows).float().cpu().numpy())
    return np.concatenate(out)


def _frame_rows(method: FrameMethod, drive: EventDrive, db: str, queries: Sequence[str], places: dict[str, Places],
                protocol: RecallProtocol, work_dir: Path, vocab_images: int, batch_size: int, device: str | None,
                progress: bool) -> tuple[list[RecallRow], dict[str, Any] | None, str | None]:
    """The recall rows of one frame baseline, its record, or the reason it was skipped."""
    extractor, overrides, skipped = build_frame_extractor(method, drive.root, drive[db], work_dir,
                                                          vocab_images=vocab_images, device=device, progress=progress)
    if extractor is None:
        return [], None, skipped
    described, offset = [], 0
    for name in (db, *queries):
        frames, dt = nearest_frames(drive[name], places[name].t_us)
        offset = max(offset, int(dt.max()))
        desc = describe_frames(extractor, drive.root, frames, batch_size=batch_size, device=pick_device(device),
                               progress=progress, desc=f"{method.label}: {name}")
        described.append(DescribedPlaces(name, drive[name].condition, places[name].xy, desc))
    record: dict[str, Any] = {"extractor": method.extractor, "overrides": list(overrides),
                              "max_frame_offset_us": offset}
    if len(overrides) > len(method.overrides):
        record["vocabulary_learned_from"] = f"{db} frames"
    return recall_rows(method.label, described[0], described[1:], protocol), record, None


def evaluate_event_vpr(model: str | Path | None, database: str | Path, queries: Sequence[str | Path], *,
                       windows: PlaceWindows | None = None, protocol: RecallProtocol | None = None,
                       frames: Sequence[FrameMethod] = (), batch_size: int = 8, vocab_images: int = 100,
                       work_dir: str | Path | None = None, device: str | None = None,
                       progress: bool = False) -> EventVPRReport:
    """Recall@N of the ``event-vpr`` checkpoint ``model`` and of the frame baselines (module docstring).

    Args:
        model: a visloc ``event-vpr`` checkpoint; None: the shipped ``event-vpr-world``.
        database: the database traversal's folder (``ROOT/NAME`` of an event drive).
        queries: query traversal folders of the same drive, each different from ``database``.
        windows: places and windows (default ``PlaceWindows()``: every 2 m, the last 30,000 events).
        protocol: positives radius and N (default 25 m, 1 / 5 / 10 / 20).
        frames: frame baselines (``FrameMethod``); their labels must differ from each other and from ``events``.
        batch_size: windows (and frames) per forward pass.
        vocab_images: most database frames a ``vlad-aliked`` vocabulary is learned from.
        work_dir: where learned vocabularies go (kept, and reused by a later run); None: a temporary folder.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show progress bars.
    """
    windows, protocol = windows or PlaceWindows(), protocol or RecallProtocol()
    if batch_size < 1 or vocab_images < 1:
        raise InputError(f"batch_size and vocab_images: expected >= 1, got {batch_size}, {vocab_images}")
    labels = ["chance", EVENTS, *(m.label for m in frames)]
    if len(set(labels)) != len(labels):
        raise InputError(f"method labels must be distinct (and not chance or {EVENTS}), got {labels[1:]}")
    drive, db, qs = resolve_traversals(database, queries)
    model = resolve_weights(SHIPPED, model)
    net = load_event_vpr(model).to(pick_device(device))
    places = {name: _places(drive[name], windows) for name in (db, *qs)}
    described = [DescribedPlaces(name, drive[name].condition, places[name].xy,
                                 describe_events(net, drive[name], places[name], batch_size=batch_size,
                                                 progress=progress)) for name in (db, *qs)]
    rows = chance_rows(described[0], described[1:], protocol) + recall_rows(EVENTS, described[0], described[1:],
                                                                             protocol)
    records, skipped = {}, []
    with tempfile.TemporaryDirectory(prefix="visloc-event-vpr-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for method in frames:
            more, record, reason = _frame_rows(method, drive, db, qs, places, protocol, work, vocab_images,
                                               batch_size, device, progress)
            rows += more
            if record is not None:
                records[method.label] = record
            if reason is not None:
                logger.warning("%s", reason)
                skipped.append(reason)
    return EventVPRReport(drive.root, drive.split, db, qs, Path(model), windows, protocol,
                          {k: len(v) for k, v in places.items()}, tuple(rows), records, tuple(skipped))


__all__ = ["EVENTS", "EventVPRReport", "describe_events", "evaluate_event_vpr", "load_event_vpr",
           "resolve_traversals"]
