"""Generator ``distill``: street views of one split at random poses and conditions, for HF-Net distillation.

A view stands on a street of the split (``city_views.sample_street_pose``: lateral offset, any heading, a
little pitch, eye height jitter), is rendered in the season its condition asks for, is refused when it shows
a place of another split (``views.render_clean``) or too much sky, and gets its condition (time of day,
weather, blur, noise, exposure; a mix of ``CONDITION_PRESETS``) applied. No label is written beyond the pose:
the distillation targets are the teacher's outputs on these images.

Layout of ``out``::

    images/000000.jpg ...   RGB views (``image_format``: jpg or png), ``width`` x ``height``
    views.csv               name,qw,qx,qy,qz,tx,ty,tz,condition,street_id  (cam_from_world, world metres)
    world.yaml              completion record (job, conf, counts, camera ``K``), written last

View ``i`` draws everything from ``job_rng(seed, "distill", split, i)``, so it is the same in a first run
and after a resume. Rows are kept in ``views/<first>.csv`` chunks while the job runs (a chunk is done when
its file exists; a resume re-renders at most one chunk) and joined into ``views.csv`` at the end.
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.conf import ConfError
from visloc.data.scene.city import City, build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import sample_street_pose
from visloc.data.scene.conditions import CONDITION_PRESETS, ConditionConf, condition_name, parse_condition
from visloc.data.scene.places import Split
from visloc.data.scene.render import intrinsics
from visloc.data.world.base import ItemWriter, WorldJob, check_frame_budget, finish, job_rng, start
from visloc.data.world.base import progress as progress_bar
from visloc.data.world.views import condition_image, render_clean
from visloc.io.jobs import JobSummary
from visloc.io.poses import CameraPose

KIND = "distill"
#: views.csv header
COLUMNS = ("name", "qw", "qx", "qy", "qz", "tx", "ty", "tz", "condition", "street_id")
#: views per row chunk (the resume granularity of views.csv)
CHUNK = 64


def _check(ok: bool, name: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"DistillConf.{name}: {problem}, got {value!r}")


def _check_choice(conf: DistillConf, names: str, weights: str, none_ok: bool) -> None:
    values, w = getattr(conf, names), getattr(conf, weights)
    _check(len(values) > 0, names, "must name at least one choice", values)
    for v in values:
        _check(v in CONDITION_PRESETS or (none_ok and v == "none"), names,
               f"unknown condition preset {v!r} (known: {', '.join(sorted(CONDITION_PRESETS))})", values)
    _check(len(w) == len(values) and min(w) >= 0 and sum(w) > 0, weights,
           f"needs {len(values)} non-negative weights with a positive sum", w)


@dataclass(frozen=True)
class DistillConf:
    """What :func:`generate_distill` renders; every field is checked at construction.

    The condition of a view is ``time + season + weather + exposure + extras``: one time of day, one season,
    one weather and one exposure (``none``: clear, unchanged) drawn by their weights, and each extra (blur,
    noise) with its own probability; parts are ``CONDITION_PRESETS`` names, and the extras must set fields
    that no group sets (``fog`` as an extra would clash with the weathers).

    Attributes:
        city: the city (its ``seed`` is the world seed); by default without opencv-doc's photos, which hold
            the graf evaluation pair (and the same city on every machine).
        num_views: views written.
        max_views: the frame budget; ``num_views`` above it fails at once.
        width, height: image size (pixels, >= 32).
        focal: focal length (pixels); the principal point is the image centre.
        lateral_m, yaw_deg, pitch_deg, height_m: pose sampling on the street (``sample_street_pose``).
        max_foreign: tolerated share of non-sky pixels showing another split (0: none).
        max_sky: views with a larger share of sky pixels are redrawn (long empty vistas teach little).
        max_tries: poses tried per view before it is given up (recorded as skipped).
        image_format: ``jpg`` or ``png``; ``jpeg_quality`` 1..100 for jpg.
    """

    city: CityConf = field(default_factory=lambda: CityConf(extra_photos=False))
    num_views: int = 3000
    max_views: int = 200_000
    width: int = 640
    height: int = 480
    focal: float = 500.0
    times: tuple[str, ...] = ("day", "dusk", "night")
    time_weights: tuple[float, ...] = (0.6, 0.2, 0.2)
    seasons: tuple[str, ...] = ("summer", "autumn", "winter")
    season_weights: tuple[float, ...] = (0.5, 0.25, 0.25)
    weathers: tuple[str, ...] = ("none", "mist", "fog", "drizzle", "rain")
    weather_weights: tuple[float, ...] = (0.6, 0.1, 0.1, 0.1, 0.1)
    exposures: tuple[str, ...] = ("none", "underexposed", "overexposed")
    exposure_weights: tuple[float, ...] = (0.8, 0.1, 0.1)
    extras: tuple[str, ...] = ("blur", "noise")
    extra_probs: tuple[float, ...] = (0.1, 0.2)
    lateral_m: float = 2.5
    yaw_deg: float = 180.0
    pitch_deg: float = 10.0
    height_m: float = 0.5
    max_foreign: float = 0.0
    max_sky: float = 0.6
    max_tries: int = 50
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        _check(self.num_views >= 1, "num_views", "must be >= 1", self.num_views)
        check_frame_budget(self.num_views, self.max_views, "DistillConf.num_views")
        _check(min(self.width, self.height) >= 32, "width", "width and height must be >= 32 px",
               (self.width, self.height))
        _check(self.focal > 0, "focal", "must be positive (pixels)", self.focal)
        _check_choice(self, "times", "time_weights", none_ok=False)
        _check_choice(self, "seasons", "season_weights", none_ok=False)
        _check_choice(self, "weathers", "weather_weights", none_ok=True)
        _check_choice(self, "exposures", "exposure_weights", none_ok=True)
        for v in self.extras:
            _check(v in CONDITION_PRESETS, "extras", f"unknown condition preset {v!r}", self.extras)
        self._check_combinations()
        _check(len(self.extra_probs) == len(self.extras) and all(0 <= p <= 1 for p in self.extra_probs),
               "extra_probs", f"needs {len(self.extras)} probabilities in [0, 1]", self.extra_probs)
        for name in ("lateral_m", "yaw_deg", "pitch_deg", "height_m"):
            _check(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        _check(0 <= self.max_foreign < 1, "max_foreign", "must be in [0, 1)", self.max_foreign)
        _check(0 < self.max_sky <= 1, "max_sky", "must be in (0, 1]", self.max_sky)
        _check(self.max_tries >= 1, "max_tries", "must be >= 1", self.max_tries)
        _check(self.image_format in ("jpg", "png"), "image_format", "must be 'jpg' or 'png'", self.image_format)
        _check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100", self.jpeg_quality)

    def _check_combinations(self) -> None:
        """Every draw must be a valid condition: the groups and the extras set distinct fields."""
        for parts in itertools.product(self.times, self.seasons, self.weathers, self.exposures):
            name = "+".join(p for p in (*parts, *self.extras) if p != "none")
            try:
                parse_condition(name)
            except ConfError as e:
                raise ConfError(f"DistillConf.extras: a draw would be invalid: {e}") from None


@dataclass(frozen=True)
class DistillFiles:
    """What :func:`generate_distill` wrote: ``root / images[i]`` are the views, ``views`` their table."""

    root: Path
    images: tuple[str, ...]
    views: Path
    record: Path
    summary: JobSummary


@dataclass(frozen=True)
class DistillView:
    """One row of ``views.csv``: image name, ``cam_from_world``, canonical condition name, street id."""

    name: str
    pose: CameraPose
    condition: str
    street_id: int


def sample_condition(conf: DistillConf, rng: np.random.Generator) -> ConditionConf:
    """One condition of the conf's mix (``time + season + weather + extras``), see :class:`DistillConf`."""

    def pick(names: tuple[str, ...], weights: tuple[float, ...]) -> str:
        p = np.asarray(weights, np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    parts = [pick(conf.times, conf.time_weights), pick(conf.seasons, conf.season_weights),
             pick(conf.weathers, conf.weather_weights), pick(conf.exposures, conf.exposure_weights)]
    parts += [e for e, p in zip(conf.extras, conf.extra_probs, strict=True) if rng.random() < p]
    return parse_condition("+".join(p for p in parts if p != "none"))


@cache
def _city(conf: CityConf, season: str) -> City:
    return build_city(conf, season)


def render_view(conf: DistillConf, split: Split, index: int) -> tuple[np.ndarray, DistillView] | None:
    """View ``index`` of the job: uint8 RGB ``[H, W, 3]`` and its row, or None after ``max_tries`` refusals."""
    rng = job_rng(conf.city.seed, KIND, split, index)
    cond = sample_condition(conf, rng)
    city = _city(conf.city, cond.season)
    size = (conf.width, conf.height)
    K = intrinsics(conf.focal, conf.width, conf.height)
    name = f"images/{index:06d}.{conf.image_format}"
    for _ in range(conf.max_tries):
        pose, street_id = sample_street_pose(city, rng, split, lateral_m=conf.lateral_m, yaw_deg=conf.yaw_deg,
                                             pitch_deg=conf.pitch_deg, height_m=conf.height_m)
        frame = render_clean(city, pose, split, K=K, size=size, max_foreign=conf.max_foreign)
        if frame is None or float(np.mean(frame.place_id < 0)) > conf.max_sky:
            continue
        return condition_image(frame, cond, rng), DistillView(name, pose, condition_name(cond), int(street_id))
    return None


def _row(v: DistillView) -> list[str]:
    q, t = v.pose.qvec, v.pose.t
    return [v.name, *(f"{x:.9f}" for x in q), *(f"{x:.6f}" for x in t), v.condition, str(v.street_id)]


def _csv(rows: list[list[str]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


def generate_distill(conf: DistillConf, out: Path, *, split: Split, progress: bool = True) -> DistillFiles:
    """Write ``conf.num_views`` views of ``split`` into ``out`` (module docstring: layout); resumable.

    Raises:
        InputError: ``out`` holds another job (``base.start``).
    """
    out = Path(out)
    job = WorldJob(KIND, split, conf.city.seed, conf, out)
    writer = ItemWriter(out)
    views = out / "views.csv"
    if not start(job):
        _generate(conf, split, writer, progress)
        rows = "".join((out / f"views/{c:06d}.csv").read_text() for c in range(0, conf.num_views, CHUNK))
        writer.write_text("views.csv", _csv([], header=True) + rows)
        K = intrinsics(conf.focal, conf.width, conf.height)
        finish(job, writer.summary, {"camera": {"width": conf.width, "height": conf.height, "K": K.tolist()}})
        shutil.rmtree(out / "views", ignore_errors=True)
    return DistillFiles(out, tuple(v.name for v in read_views(views)), views, out / "world.yaml", writer.summary)


def _generate(conf: DistillConf, split: Split, writer: ItemWriter, enabled: bool) -> None:
    """Render the views not yet on disk; a chunk's rows file is written after its last view."""
    rows: list[list[str]] = []
    for i in progress_bar(range(conf.num_views), total=conf.num_views, desc=f"distill {split}", enabled=enabled):
        first = i - i % CHUNK
        chunk = f"views/{first:06d}.csv"
        if writer.path(chunk).is_file():
            writer.summary.already_done += 1
            continue
        name = f"images/{i:06d}.{conf.image_format}"
        done = writer.has(name)  # a resumed chunk: the image is kept, its row is rendered again
        view = render_view(conf, split, i)
        if view is None:
            writer.skip(name, f"no view of {split} places alone (sky <= max_sky) in {conf.max_tries} tries")
        else:
            if not done:
                writer.write_image(name, view[0], jpeg_quality=conf.jpeg_quality)
            rows.append(_row(view[1]))
        if i == min(first + CHUNK, conf.num_views) - 1:
            writer.write_text(chunk, _csv(rows, header=False))
            rows = []


def read_views(path: str | Path) -> list[DistillView]:
    """The rows of a ``views.csv`` (``ValueError`` naming the line for a malformed one)."""
    path = Path(path)
    out = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(COLUMNS)}, got {header}")
        for line, row in enumerate(reader, 2):
            try:
                q, t = [float(x) for x in row[1:5]], [float(x) for x in row[5:8]]
                out.append(DistillView(row[0], CameraPose.from_qvec(q, t), row[8], int(row[9])))
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{line}: malformed row ({e})") from None
    return out
