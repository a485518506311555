"""The ``pairs`` generator: image pairs of one split with exact depth, poses, overlap and difficulty bins.

Each pair is two street views of the split, rendered from the city (``visloc.data.scene``):

1. camera 0: :func:`~visloc.data.scene.city_views.sample_street_pose` on a street of the split;
2. camera 1 near it (:func:`second_pose`): its centre moved by a baseline drawn in ``PairsConf.baseline_m``, in a
   direction drawn around camera 0's heading (up or down by at most ``height_change_m``), standing on a street of
   the split ``street_margin_m`` away from the facade lines; its heading turned by at most ``yaw_change_deg``,
   its pitch and roll drawn within ``pitch_deg`` / ``roll_deg``;
3. a candidate is rejected when a view shows another split's places (``max_foreign`` of its non-sky pixels,
   :func:`~visloc.data.world.views.render_clean`), when its symmetric overlap (:func:`~visloc.data.world.pairs_gt.
   pair_overlap`) is outside ``(min_overlap, max_overlap]``, or, with ``balance_bins``, when its difficulty level
   is not the one pair ``i`` is due (level ``i % num_levels``, so that the levels come in equal numbers).

Difficulty bins (the pair's ``level``, 0 = easiest, ``bin`` its name):
    overlap: ``(min_overlap, max_overlap]`` split into ``num_overlap_bins`` equal bins, lower end open as in
    glue-factory's MegaDepth sampler; its defaults ``0.1, 0.7, 3`` are glue-factory's MegaDepth training conf
    (LoFTR's MegaDepth index is likewise built from pairs of overlap in [0.1, 0.7]; ScanNet-1500 keeps SuperGlue's
    [0.4, 0.8]). The highest-overlap bin is level 0. Those benchmarks bin by overlap only; the viewpoint bins are
    this generator's: the relative rotation angle against ``angle_bins_deg`` (level = the number of edges <= the
    angle, default edges 15 and 30 degrees). ``level = max(overlap level, angle level)``.

Every image gets a condition drawn from ``conditions0`` / ``conditions1`` (``ConditionConf``; a season other than
the city's renders the image from the city of that season, same geometry). Pair ``i`` is drawn from its own
generator (``job_rng(seed, "pairs", split, i)``), so it is the same whether written in a first run or on a resume.
Poses go through the text precision of ``poses.txt`` before rendering, so the files reproduce every stored number.
The files: :mod:`visloc.data.world.pairs_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visloc.conf import ConfError
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.condition_conf import ConditionConf, parse_condition
from visloc.data.scene.places import Split
from visloc.data.world.base import WorldJob, check_frame_budget, check_split
from visloc.data.world.base import progress as progress_bar
from visloc.data.world.pairs_files import PairInfo
from visloc.io.jobs import JobSummary
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.scene.city import City

KIND = "pairs"
#: names of the difficulty levels when there are three
LEVEL_NAMES = ("easy", "medium", "hard")


def _check_conditions(name: str, conds: tuple[str, ...]) -> None:
    """A non-empty list of names ``parse_condition`` reads (e.g. ``day``, ``night+fog``)."""
    if not conds:
        _fail(name, "must be a non-empty list of condition names (e.g. day, night+fog)", conds)
    for c in conds:
        try:
            parse_condition(c)
        except ConfError as e:
            _fail(name, f"bad condition name ({e})", c)


def _fail(where: str, problem: str, value: object) -> None:
    raise ConfError(f"PairsConf.{where}: {problem}, got {value!r}")


def _range(value: tuple[float, ...], where: str, lo: float, hi: float) -> None:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        _fail(where, f"must be (min, max) with {lo:g} <= min <= max <= {hi:g}", value)


@dataclass(frozen=True)
class PairsConf:
    """The ``pairs`` generator (module docstring); every field is checked.

    Attributes:
        city: the city (its ``seed`` is the world seed; its camera ``width``, ``height``, ``focal`` are used).
        num_pairs: pairs to write.
        max_frames: the most images a job may write (two per pair).
        baseline_m: (min, max) distance between the two camera centres, metres.
        height_change_m: largest height difference of camera 1 (metres; camera heights stay >= 0.3 m).
        yaw_change_deg: largest heading change of camera 1, degrees.
        pitch_deg: camera 1's pitch is drawn in [-pitch_deg, pitch_deg] (camera 0's by ``sample_street_pose``).
        roll_deg: camera 1's roll is drawn in [-roll_deg, roll_deg].
        street_margin_m: camera 1 stays this far inside the facade lines of a street of the split.
        min_overlap, max_overlap: accepted symmetric overlap ``(min, max]``.
        num_overlap_bins: equal overlap bins over ``(min_overlap, max_overlap]`` = difficulty levels.
        angle_bins_deg: ``num_overlap_bins - 1`` increasing rotation-angle edges of the angle levels.
        balance_bins: draw pair ``i`` of level ``i % num_overlap_bins`` (equal counts per level).
        overlap_stride: overlap counted on every ``overlap_stride``-th pixel in both directions.
        depth_rel_tol: relative depth tolerance of the occlusion check of the overlap (``flow.REL_TOL``).
        max_foreign: tolerated share of non-sky pixels showing another split's places.
        conditions0, conditions1: conditions of images 0 and 1, one drawn per pair from each.
        tries_per_view: second cameras tried around one first camera before a new first camera is drawn.
        max_tries: candidate pairs tried for one pair before it is skipped (reported, the job goes on).
    """

    city: CityConf = field(default_factory=CityConf)
    num_pairs: int = 200
    max_frames: int = 20_000
    baseline_m: tuple[float, float] = (0.5, 8.0)
    height_change_m: float = 0.3
    yaw_change_deg: float = 40.0
    pitch_deg: float = 8.0
    roll_deg: float = 3.0
    street_margin_m: float = 1.0
    min_overlap: float = 0.1
    max_overlap: float = 0.7
    num_overlap_bins: int = 3
    angle_bins_deg: tuple[float, ...] = (15.0, 30.0)
    balance_bins: bool = True
    overlap_stride: int = 4
    depth_rel_tol: float = 0.01
    max_foreign: float = 0.0
    conditions0: tuple[str, ...] = ("day",)
    conditions1: tuple[str, ...] = ("day",)
    tries_per_view: int = 6
    max_tries: int = 300

    def __post_init__(self) -> None:
        for name in ("num_pairs", "max_frames", "num_overlap_bins", "overlap_stride", "tries_per_view", "max_tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, "must be an integer >= 1", value)
        check_frame_budget(2 * self.num_pairs, self.max_frames, "PairsConf.num_pairs")
        _range(self.baseline_m, "baseline_m", 0.0, 100.0)
        for name, hi in (("height_change_m", 10.0), ("yaw_change_deg", 180.0), ("pitch_deg", 60.0),
                         ("roll_deg", 60.0), ("street_margin_m", 10.0)):
            if not 0.0 <= getattr(self, name) <= hi:
                _fail(name, f"must be in [0, {hi:g}]", getattr(self, name))
        if not 0.0 <= self.min_overlap < self.max_overlap <= 1.0:
            _fail("max_overlap", "need 0 <= min_overlap < max_overlap <= 1",
                  (self.min_overlap, self.max_overlap))
        edges = self.angle_bins_deg
        bounds = zip((0.0, *edges), (*edges, 180.0), strict=True)
        if len(edges) != self.num_overlap_bins - 1 or any(not a < b for a, b in bounds):
            _fail("angle_bins_deg", f"must be {self.num_overlap_bins - 1} increasing angles in (0, 180) "
                  "(num_overlap_bins - 1)", edges)
        if not 0.0 < self.depth_rel_tol < 1.0:
            _fail("depth_rel_tol", "must be in (0, 1)", self.depth_rel_tol)
        if not 0.0 <= self.max_foreign < 1.0:
            _fail("max_foreign", "must be in [0, 1)", self.max_foreign)
        for name in ("conditions0", "conditions1"):
            _check_conditions(name, getattr(self, name))

    def condition(self, which: int, k: int) -> ConditionConf:
        """The ``k``-th condition of image ``which`` (0 or 1), parsed."""
        return parse_condition((self.conditions0, self.conditions1)[which][k])

    @property
    def num_levels(self) -> int:
        """Number of difficulty levels (= overlap bins = angle bins)."""
        return self.num_overlap_bins

    def levels(self, overlap: float, angle_deg: float) -> tuple[int, int, int]:
        """``(overlap_level, angle_level, level)`` of a pair (module docstring); overlap in the accepted range."""
        width = (self.max_overlap - self.min_overlap) / self.num_overlap_bins
        k = sum(overlap > self.min_overlap + j * width for j in range(1, self.num_overlap_bins))
        o_level = self.num_overlap_bins - 1 - k
        a_level = sum(angle_deg >= e for e in self.angle_bins_deg)
        return o_level, a_level, max(o_level, a_level)

    def level_name(self, level: int) -> str:
        """``easy`` / ``medium`` / ``hard`` for three levels, else ``level<k>``."""
        return LEVEL_NAMES[level] if self.num_levels == 3 else f"level{level}"


@dataclass(frozen=True)
class PairsFiles:
    """What :func:`generate_pairs` wrote.

    Attributes:
        root: the dataset folder (image root of every name).
        pairs: ``pairs.txt``; info: ``pairs_info.csv``; cameras: ``cameras.txt``; poses: ``poses.txt``.
        names: the image-name pairs, in file order.
        summary: items written now, found done, skipped (with reasons).
    """

    root: Path
    pairs: Path
    info: Path
    cameras: Path
    poses: Path
    names: tuple[tuple[str, str], ...]
    summary: JobSummary


def _yaw_pitch(pose: CameraPose) -> tuple[float, float]:
    """Heading (degrees from east, counter-clockwise) and pitch (degrees, up positive) of a camera."""
    f = pose.R[2]  # the optical axis in world coordinates
    return float(np.degrees(np.arctan2(f[1], f[0]))), float(np.degrees(np.arcsin(np.clip(f[2], -1.0, 1.0))))


def camera_pose(center: np.ndarray, yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> CameraPose:
    """``cam_from_world`` at ``center`` [3] (ENU metres) looking along ``yaw_deg`` / ``pitch_deg``, rolled.

    ``roll_deg`` turns the camera about its optical axis (positive: the camera's x axis towards its y axis).
    """
    from visloc.data.scene.trajectory import pose_from_heading

    level = pose_from_heading(center, yaw_deg, pitch_deg)
    r = np.radians(roll_deg)
    roll = np.array([[np.cos(r), -np.sin(r), 0.0], [np.sin(r), np.cos(r), 0.0], [0.0, 0.0, 1.0]])
    R = roll @ level.R
    return CameraPose(R, -R @ np.asarray(center, np.float64))


def second_pose(pose0: CameraPose, rng: np.random.Generator, conf: PairsConf) -> CameraPose:
    """Camera 1 of a candidate pair near camera 0 (module docstring, step 2; not yet checked to be on a street)."""
    yaw0, _ = _yaw_pitch(pose0)
    baseline = rng.uniform(*conf.baseline_m)
    direction = np.radians(yaw0) + rng.uniform(-np.pi, np.pi)
    dz = rng.uniform(-1.0, 1.0) * min(conf.height_change_m, baseline)
    horizontal = np.sqrt(max(baseline**2 - dz**2, 0.0))
    c0 = pose0.center
    center = c0 + np.array([horizontal * np.cos(direction), horizontal * np.sin(direction), dz])
    center[2] = max(center[2], 0.3)
    yaw = yaw0 + rng.uniform(-conf.yaw_change_deg, conf.yaw_change_deg)
    pitch = rng.uniform(-conf.pitch_deg, conf.pitch_deg)
    roll = rng.uniform(-conf.roll_deg, conf.roll_deg)
    return camera_pose(center, yaw, pitch, roll)


def on_street(city: City, xy: np.ndarray, split: Split, margin_m: float) -> bool:
    """True when the point ``xy`` (metres) is on a street of ``split``, ``margin_m`` inside its facade lines."""
    p = np.asarray(xy, np.float64)[:2]
    for street in city.streets:
        if street.split != split:
            continue
        a, b = np.asarray(street.start, np.float64), np.asarray(street.end, np.float64)
        d = b - a
        length = float(np.linalg.norm(d))
        if length == 0:
            continue
        d /= length
        along, across = float((p - a) @ d), float(abs(d[0] * (p - a)[1] - d[1] * (p - a)[0]))
        if 0.0 <= along <= length and across <= street.width_m / 2 - margin_m:
            return True
    return False


def as_written(pose: CameraPose) -> CameraPose:
    """``pose`` rounded as ``write_poses`` writes it (10 significant digits), so the files reproduce it exactly.

    Rounded until the written numbers no longer change (the quaternion is normalised on reading).
    """
    values: list[float] = []
    for _ in range(4):
        new = [float(f"{v:.10g}") for v in (*pose.qvec, *pose.t)]
        if new == values:
            break
        values = new
        pose = CameraPose.from_qvec(values[:4], values[4:])
    return pose


@dataclass
class _Context:
    """What every pair of one job shares: the conf, the split, the cities (one per season) and the camera."""

    conf: PairsConf
    split: Split
    cities: dict[str, Any] = field(default_factory=dict)

    def city(self, season: str | None = None) -> City:
        from visloc.data.scene.city import build_city

        key = season or "summer"
        if key not in self.cities:
            self.cities[key] = build_city(self.conf.city, season=key)
        return self.cities[key]

    @cached_property
    def K(self) -> np.ndarray:  # noqa: N802 (the matrix is called K)
        from visloc.data.world.views import camera_matrix

        return camera_matrix(self.city())


def generate_pairs(conf: PairsConf, out: str | Path, *, split: Split, progress: bool = True) -> PairsFiles:
    """Write ``conf.num_pairs`` pairs of ``split`` into ``out`` (module docstring; files: ``pairs_files``).

    Resumable: finished pairs (their ``meta/*.json``) are skipped on a re-run, ``pairs.txt``, ``pairs_info.csv``,
    ``cameras.txt`` and ``poses.txt`` are written after the last pair and ``world.yaml`` last of all; a finished
    job returns at once, a folder holding another job is refused.

    Raises:
        ConfError: a bad conf field or split (one line naming it).
        InputError: ``out`` holds another job.
    """
    from visloc.data.world.base import ItemWriter, start
    from visloc.data.world.pairs_make import finish_pairs, make_pair

    split_ = check_split(split)
    if not isinstance(conf, PairsConf):
        raise ConfError(f"generate_pairs: conf must be a PairsConf, got {type(conf).__name__}")
    out = Path(out)
    job = WorldJob(KIND, split_, conf.city.seed, conf, out)
    writer = ItemWriter(out)
    if start(job):
        return finish_pairs(job, writer, done=True)
    ctx = _Context(conf, split_)
    for i in progress_bar(range(conf.num_pairs), total=conf.num_pairs, desc=KIND, enabled=progress):
        make_pair(ctx, writer, i)
    return finish_pairs(job, writer, done=False)


__all__ = ["LEVEL_NAMES", "PairInfo", "PairsConf", "PairsFiles", "as_written", "camera_pose", "generate_pairs",
           "on_street", "second_pose"]
