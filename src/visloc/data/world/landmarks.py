"""``landmarks``: a GLDv2-like classification set (train / val) or a Revisited-Oxford-style test set (test).

**Train / val** (:func:`generate_landmarks` with ``split="train"`` or ``"val"``): one class per landmark of the
split made of facades (``Place.landmark_id``: a facade or a group of adjacent facades; boards and closing walls
are no classes), ``views_per_landmark`` views each, drawn by
:func:`visloc.data.world.landmark_views.sample_view` within ``views`` (distance, angle, height, target on the
facade, occluding boards) under a condition drawn from ``conditions`` (a ``ConditionConf`` name each; repeat a
name to weight it; a season renders the city of that season). A view is **rejected** and redrawn (up to
``max_tries`` draws, then the view is given up) when

- it shows a place of another split: more than ``max_foreign`` of its non-sky pixels (default 0: none), or
- the landmark covers too little of it: fewer than ``min_landmark_fraction`` of the image's pixels show the
  landmark's places, or fewer than ``min_landmark_share`` of the pixels of all landmarks in view are the
  class's (its main subject is another landmark), both read from the renderer's place-id buffer (an occluding
  board counts as not-landmark).

A class with fewer than ``min_views`` accepted views is left out (its images are removed). Written in GLDv2's
train layout (:mod:`visloc.data.world.gldv2_layout`): ``train.csv``, ``train_clean.csv`` (every written image:
the set is clean by construction), ``<a>/<b>/<c>/<id>.jpg`` with ids from the seed, split, landmark and view,
and with ``pack`` also ``images_NNN.tar`` of ``tar_size`` images plus ``md5.images_NNN.txt`` beside the tree
(as a downloaded GLDv2 folder is after extraction). ``views.csv`` adds what GLDv2 does not have: per image its
condition, camera distance / angle / height, occlusion, coverage, pose (``cam_from_world``) and visible places.

**Test** (``split="test"``, or any split with ``layout="revisited"``): :mod:`visloc.data.world.landmarks_test`
(queries, database, distractors, ``gnd_<name>.pkl``). A Revisited-style set of the **val** split
(``--split val --set layout=revisited --set revisited.name=rworldval``) is the one to validate and tune on: its
places are neither trained on nor in the test set, which then stays blind.

Deterministic per ``city.seed``: every draw comes from :func:`~visloc.data.world.base.job_rng` keyed on the
split, the role (view / query / database), the landmark, the view and the draw. Resumable: each view's outcome
is kept in ``.views/`` (image first, then its record), the CSVs / pickle are written last, ``world.yaml`` after
them; ``.views/`` is removed when the job completes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from visloc.conf import ConfError
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.places import Split
from visloc.data.world import gldv2_layout as gl
from visloc.data.world.base import (
    RECORD,
    ItemWriter,
    WorldJob,
    check_frame_budget,
    check_split,
    finish,
    progress,
    start,
)
from visloc.data.world.landmark_render import Rendered, Renderer, ViewRecord
from visloc.data.world.landmark_views import Landmark, ViewConf
from visloc.data.world.revisited import RevisitedConf
from visloc.io.atomic import atomic_write_text
from visloc.io.jobs import JobSummary

logger = logging.getLogger(__name__)

KIND = "landmarks"
#: per-view records of a job in progress
VIEWS_DIR = ".views"
VIEWS_CSV = "views.csv"
DEFAULT_CONDITIONS = ("day", "day", "day", "day", "dusk", "night", "mist", "fog", "drizzle", "rain", "blur", "noise",
                      "autumn", "winter", "dusk+rain", "night+fog", "winter+dusk", "underexposed", "overexposed")


def _query_views() -> ViewConf:
    return ViewConf(distance_m=(6.0, 20.0), angle_deg=15.0, height_m=(1.4, 2.0), max_pitch_deg=15.0,
                    target_spread=0.2, occluder_prob=0.0)


@dataclass(frozen=True)
class LandmarksConf:
    """The ``landmarks`` generator (module docstring).

    Attributes:
        city: the city (its ``seed`` is the world seed); the camera is its default (``width``, ``height``,
            ``focal``).
        views_per_landmark: views drawn per class (train / val).
        min_views: classes with fewer accepted views are left out.
        max_tries: draws per view before it is given up.
        views: camera ranges of class views and of the test set's database views.
        query_views: camera ranges of the test set's queries (frontal, near eye height, no occluder).
        conditions: condition names the views draw from (uniformly; repeat a name to weight it).
        min_landmark_fraction: least share of the image's pixels the landmark must cover.
        min_landmark_share: least share of the landmark pixels in view that must be the class's.
        max_foreign: tolerated share of non-sky pixels showing another split (0: none).
        jpeg_quality: JPEG quality of the images.
        pack: also pack the images into ``images_NNN.tar`` with md5 files (train / val).
        tar_size: images per tar.
        max_frames: the most images a job may write; a conf asking more fails at once.
        revisited: the test set (queries, database, ground-truth thresholds).
        layout: ``gldv2`` (classes), ``revisited`` (queries + database + ``gnd_<name>.pkl``) or ``auto``:
            ``revisited`` for the test split, ``gldv2`` for train and val.
    """

    city: CityConf = field(default_factory=CityConf)
    views_per_landmark: int = 12
    min_views: int = 2
    max_tries: int = 8
    views: ViewConf = field(default_factory=ViewConf)
    query_views: ViewConf = field(default_factory=_query_views)
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    min_landmark_fraction: float = 0.2
    min_landmark_share: float = 0.6
    max_foreign: float = 0.0
    jpeg_quality: int = 90
    pack: bool = False
    tar_size: int = 1000
    max_frames: int = 100_000
    revisited: RevisitedConf = field(default_factory=RevisitedConf)
    layout: Literal["auto", "gldv2", "revisited"] = "auto"

    def layout_for(self, split: Split) -> Literal["gldv2", "revisited"]:
        """The layout a job of ``split`` writes (``layout``, with ``auto`` resolved)."""
        if self.layout == "auto":
            return "revisited" if split == "test" else "gldv2"
        return self.layout

    def __post_init__(self) -> None:
        from visloc.data.scene.conditions import parse_condition

        for f, lo in (("views_per_landmark", 1), ("min_views", 1), ("max_tries", 1), ("tar_size", 1),
                      ("max_frames", 1)):
            if getattr(self, f) < lo:
                raise ConfError(f"LandmarksConf.{f}: must be >= {lo}, got {getattr(self, f)!r}")
        if self.min_views > self.views_per_landmark:
            raise ConfError(f"LandmarksConf.min_views: must be <= views_per_landmark = {self.views_per_landmark}, "
                            f"got {self.min_views!r}")
        for f in ("min_landmark_fraction", "min_landmark_share", "max_foreign"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfError(f"LandmarksConf.{f}: must be in [0, 1], got {getattr(self, f)!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfError(f"LandmarksConf.jpeg_quality: must be in [1, 100], got {self.jpeg_quality!r}")
        if self.layout not in ("auto", "gldv2", "revisited"):
            raise ConfError(f"LandmarksConf.layout: must be auto, gldv2 or revisited, got {self.layout!r}")
        if not self.conditions:
            raise ConfError("LandmarksConf.conditions: must name at least one condition, got ()")
        r = self.revisited
        for where, names in (("conditions", self.conditions), ("revisited.db_conditions", r.db_conditions),
                             ("revisited.easy_conditions", r.easy_conditions),
                             ("revisited.query_condition", (r.query_condition,))):
            for name in names:
                try:
                    parse_condition(name)
                except ConfError as e:
                    raise ConfError(f"LandmarksConf.{where}: {e}") from None


@dataclass(frozen=True)
class LandmarksFiles:
    """What a ``landmarks`` job wrote.

    Attributes:
        root: the dataset folder.
        layout: ``gldv2`` (classes) or ``revisited`` (queries + database).
        index: ``train.csv``, or ``gnd_<name>.pkl``.
        num_images: images listed (train.csv rows; database + query images for the test set).
        num_classes: classes (train / val) or query landmarks (test).
        tars: the tars written (``pack``), in order.
        summary: items written now, found done, given up.
    """

    root: Path
    layout: Literal["gldv2", "revisited"]
    index: Path
    num_images: int
    num_classes: int
    tars: tuple[Path, ...]
    summary: JobSummary


def generate_landmarks(conf: LandmarksConf, out: str | Path, *, split: Split, progress: bool = True) -> LandmarksFiles:
    """Write the landmark set of ``split`` into ``out`` (module docstring); a finished job returns at once.

    Raises:
        ConfError: the split has no landmark, or the conf asks for more than ``max_frames`` images (naming the
            field).
        InputError: ``out`` holds another job.
    """
    split = check_split(split)
    out = Path(out)
    renderer = Renderer.build(conf, split)
    landmarks = renderer.landmarks
    if not landmarks:
        raise ConfError(f"LandmarksConf.city: the {split} split has no landmark (a bigger city or another split)")
    revisited = conf.layout_for(split) == "revisited"
    if revisited:
        from visloc.data.world.landmarks_test import planned_test_images

        check_frame_budget(planned_test_images(conf, len(landmarks)), conf.max_frames, "LandmarksConf.revisited")
    else:
        check_frame_budget(len(landmarks) * conf.views_per_landmark, conf.max_frames,
                           "LandmarksConf.views_per_landmark")
    job = WorldJob(KIND, split, conf.city.seed, conf, out)
    writer = ItemWriter(out)
    if start(job):
        return _finished(out, writer.summary)
    if revisited:
        from visloc.data.world.landmarks_test import write_test_set

        files, extra = write_test_set(renderer, writer, progress)
    else:
        files, extra = _write_classes(renderer, writer, progress)
    finish(job, writer.summary, extra)
    shutil.rmtree(out / VIEWS_DIR, ignore_errors=True)
    return files


def _finished(out: Path, summary: JobSummary) -> LandmarksFiles:
    rec = yaml.safe_load((out / RECORD).read_text())
    return LandmarksFiles(out, rec["layout"], out / rec["index"], int(rec["images"]), int(rec["classes"]),
                          tuple(out / t for t in rec["tars"]), summary)


def view_record(writer: ItemWriter, renderer: Renderer, landmark: Landmark, role: str, view: int, name: str,
                on_render: Callable[[Rendered], dict[str, Any]] | None = None) -> ViewRecord:
    """The record of one view: read from ``.views/`` when done, else rendered, its image written, then recorded.

    Args:
        writer: the job's item writer.
        renderer: the job's renderer.
        landmark: the landmark the view is for.
        role: ``view``, ``query`` or ``db``.
        view: the view's index within its landmark and role.
        name: the image's path relative to the dataset folder (a given-up view writes only its record).
        on_render: called with the accepted draw before the record is written; returns extra record fields
            (and may write side files, which are then in place whenever the record is).
    """
    meta = writer.path(f"{VIEWS_DIR}/{role}/{landmark.id}/{view:04d}.json")
    if meta.is_file():  # done before: an accepted view counts as already done, a given-up one as nothing
        record = ViewRecord.from_json(json.loads(meta.read_text()))
        writer.summary.already_done += int(record.accepted)
        return record
    rendered = renderer.render(landmark, role, view)
    if rendered is None:
        record = ViewRecord.given_up(name, landmark.id, role, view)
    else:
        writer.write_image(name, rendered.image, jpeg_quality=renderer.conf.jpeg_quality)
        record = rendered.record(name, **(on_render(rendered) if on_render is not None else {}))
    atomic_write_text(meta, json.dumps(record.to_json(), sort_keys=True))
    return record


def _write_classes(renderer: Renderer, writer: ItemWriter, show: bool) -> tuple[LandmarksFiles, dict[str, Any]]:
    """Train / val: render every class view, drop thin classes, then tars, CSVs (module docstring)."""
    conf, out = renderer.conf, writer.root
    classes: dict[int, list[ViewRecord]] = {}
    given_up = 0
    jobs = [(lm, v) for lm in renderer.landmarks for v in range(conf.views_per_landmark)]
    for lm, v in progress(jobs, total=len(jobs), desc=f"landmarks {renderer.split}", enabled=show):
        image_id = gl.make_image_id(conf.city.seed, renderer.split, lm.id, v)
        rec = view_record(writer, renderer, lm, "view", v, gl.image_relpath(image_id))
        if rec.accepted:
            classes.setdefault(lm.id, []).append(rec)
        given_up += not rec.accepted
    for lid in [lid for lid, recs in classes.items() if len(recs) < conf.min_views]:
        logger.info("landmarks: class %d has %d views (< min_views %d), left out", lid, len(classes[lid]),
                    conf.min_views)
        for rec in classes.pop(lid):
            (out / rec.name).unlink(missing_ok=True)
    if not classes:
        logger.warning("landmarks: no class of the %s split kept a view; train.csv lists no image", renderer.split)
    records = [r for lid in sorted(classes) for r in classes[lid]]
    ids = [Path(r.name).stem for r in records]
    if len(set(ids)) != len(ids):
        raise RuntimeError("landmarks: two views got the same image id")
    tars = gl.pack_images(out, ids, conf.tar_size) if conf.pack else []
    url = f"visloc-world://landmarks/seed-{conf.city.seed}/{renderer.split}"
    write_views_csv(out / VIEWS_CSV, records, "id")
    gl.write_train_clean_csv(out / gl.TRAIN_CLEAN_CSV, {lid: [Path(r.name).stem for r in recs]
                                                       for lid, recs in classes.items()})
    index = gl.write_train_csv(out / gl.TRAIN_CSV, [gl.Gldv2Row(i, f"{url}/{i}.jpg", r.landmark_id)
                                                   for i, r in zip(ids, records, strict=True)])
    extra = {"layout": "gldv2", "index": gl.TRAIN_CSV, "images": len(ids), "classes": len(classes),
             "tars": [t.name for t in tars], "given_up": given_up}
    return LandmarksFiles(out, "gldv2", index, len(ids), len(classes), tuple(tars), writer.summary), extra


def write_views_csv(path: Path, records: list[ViewRecord], key: str) -> Path:
    """``views.csv``: one row per image (``key`` column: the GLDv2 id or the Revisited name), header first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([key, *ViewRecord.CSV_FIELDS])
    for r in records:
        w.writerow([Path(r.name).stem, *r.csv_row()])
    return atomic_write_text(path, buf.getvalue())
