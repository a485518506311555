"""Revisited Oxford / Paris layout and its ground truth from rendered geometry (the world's landmark test set).

Layout (revisitop's ``data/datasets/<name>/``)::

    <out>/jpg/<image>.jpg     database and query images (names without extension in the lists)
    <out>/gnd_<name>.pkl      {"imlist": [...], "qimlist": [...], "gnd": [{"bbx", "easy", "hard", "junk"}, ...]}

The pickle is written with protocol 2 and holds only builtins (dict, list, str, int, float), so any
Python (revisitop's loader, the project's ``visloc.data.oxford_paris.load_gnd`` with its restricted
unpickler) reads it without resolving a single global. ``bbx`` is ``[x0, y0, x1, y1]`` in pixel edges of
the query image (crop ``image[y0:y1, x0:x1]``, as revisitop's ``pil_loader(...).crop(bbx)``); ``easy``,
``hard``, ``junk`` are 0-based indices into ``imlist``, sorted.

Ground truth from geometry (``label_pair``): a query keeps ``sample points``: world points of its landmark's
visible pixels (a regular subsample of the pixels whose place id belongs to the query landmark), each with its
place id. For a database image ``d``:

- ``overlap``: the share of the query's sample points that ``d`` sees: in front of the camera, inside the
  image, and with ``d``'s place-id buffer showing the point's own place at its pixel (so a board or another
  facade in front of it, or the frame edge, hides it). Facades are planes, so this check is exact up to the
  pixel grid.
- ``angle_deg``: the angle at the query landmark's centre (the sample points' mean) between the directions to
  the query camera and to ``d``'s camera: the change of viewpoint.
- ``scale``: the ratio (>= 1) of the two cameras' distances to that centre: the change of scale.
- ``condition``: ``d``'s condition name; the queries are rendered by day.

With the thresholds of ``RevisitedConf``: **easy** when ``overlap >= easy_min_overlap``, ``angle_deg <=
easy_max_angle_deg``, ``scale <= easy_max_scale`` and the condition is one of ``easy_conditions``; otherwise
**hard** when ``overlap >= hard_min_overlap``, ``angle_deg <= hard_max_angle_deg`` and ``scale <=
hard_max_scale``; otherwise **junk** when ``d`` shows at least ``junk_min_pixels`` pixels of the query
landmark (any of its places) or any sample point at all; otherwise a negative. Defaults follow the revisited
annotation's wording: *junk* when less than 25 % of the object is visible (``hard_min_overlap = 0.25``) or
the view is too distorted. The default easy conditions are the mild ones (day, a season's textures and tint,
mist, sensor noise); night, dusk, fog, rain and blur make a view hard at best, as a strong change of
illumination does in the revisited annotation.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from visloc.conf import ConfError
from visloc.data.scene.conditions import condition_name, parse_condition
from visloc.data.scene.render import project, unproject
from visloc.io.atomic import atomic_path
from visloc.io.poses import CameraPose

Label = Literal["easy", "hard", "junk"]
LABELS: tuple[Label, ...] = ("easy", "hard", "junk")


def _check(ok: bool, field: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"RevisitedConf.{field}: {problem}, got {value!r}")


@dataclass(frozen=True)
class RevisitedConf:
    """The landmark test set (test split) in the Revisited Oxford layout.

    Attributes:
        name: dataset name: ``gnd_<name>.pkl``, images ``<name>_q<landmark>_<k>`` / ``<name>_<landmark>_<k>``.
        query_landmarks: landmarks that get queries (the first of a seeded permutation of the test split's
            landmarks); 0: all. The others get database views only (distractors).
        queries_per_landmark: queries per query landmark (frontal-ish day views, see ``LandmarksConf``).
        db_views_per_landmark: database views per query landmark.
        distractor_views_per_landmark: database views per other test landmark.
        sample_points: at most this many sample points per query (a regular subsample of its landmark pixels).
        easy_min_overlap, easy_max_angle_deg, easy_max_scale, easy_conditions: the easy rule (module doc).
        hard_min_overlap, hard_max_angle_deg, hard_max_scale: the hard rule.
        junk_min_pixels: pixels of the query landmark that make a non-positive view junk.
        query_condition: the condition of the queries.
        db_conditions: the conditions the database views draw from (as ``LandmarksConf.conditions``); empty:
            ``LandmarksConf.conditions``.
    """

    name: str = "rworld"
    query_landmarks: int = 12
    queries_per_landmark: int = 3
    db_views_per_landmark: int = 12
    distractor_views_per_landmark: int = 4
    sample_points: int = 600
    easy_min_overlap: float = 0.5
    easy_max_angle_deg: float = 30.0
    easy_max_scale: float = 2.0
    easy_conditions: tuple[str, ...] = ("day", "autumn", "winter", "mist", "noise")
    hard_min_overlap: float = 0.25
    hard_max_angle_deg: float = 75.0
    hard_max_scale: float = 4.0
    junk_min_pixels: int = 200
    query_condition: str = "day"
    db_conditions: tuple[str, ...] = ("day", "day", "day", "autumn", "winter", "mist", "noise", "dusk", "night",
                                      "fog", "rain", "blur", "night+rain", "dusk+fog")

    def __post_init__(self) -> None:
        _check(self.name.isidentifier(), "name", "must be a plain identifier (letters, digits, _)", self.name)
        for f in ("query_landmarks", "junk_min_pixels"):
            _check(getattr(self, f) >= 0, f, "must be >= 0", getattr(self, f))
        for f in ("queries_per_landmark", "db_views_per_landmark", "sample_points"):
            _check(getattr(self, f) >= 1, f, "must be >= 1", getattr(self, f))
        _check(self.distractor_views_per_landmark >= 0, "distractor_views_per_landmark", "must be >= 0",
               self.distractor_views_per_landmark)
        _check(0 < self.hard_min_overlap <= self.easy_min_overlap <= 1, "easy_min_overlap",
               "needs 0 < hard_min_overlap <= easy_min_overlap <= 1", (self.hard_min_overlap, self.easy_min_overlap))
        _check(0 <= self.easy_max_angle_deg <= self.hard_max_angle_deg <= 180, "easy_max_angle_deg",
               "needs 0 <= easy_max_angle_deg <= hard_max_angle_deg <= 180",
               (self.easy_max_angle_deg, self.hard_max_angle_deg))
        _check(1 <= self.easy_max_scale <= self.hard_max_scale, "easy_max_scale",
               "needs 1 <= easy_max_scale <= hard_max_scale", (self.easy_max_scale, self.hard_max_scale))
        _check(len(self.easy_conditions) >= 1, "easy_conditions", "must name at least one condition",
               self.easy_conditions)


@dataclass(frozen=True)
class QuerySamples:
    """What a query keeps to label database images.

    Attributes:
        points: [N, 3] world points of the query landmark's visible pixels (metres).
        place_ids: int32 [N] place of each point.
        center: [3] world camera centre of the query.
        bbx: (x0, y0, x1, y1) box of the landmark's pixels in the query image, pixel edges.
    """

    points: np.ndarray
    place_ids: np.ndarray
    center: np.ndarray
    bbx: tuple[float, float, float, float]


@dataclass(frozen=True)
class PairStats:
    """Geometry of a (query, database image) pair; see the module docstring."""

    overlap: float
    angle_deg: float
    scale: float
    landmark_pixels: int
    condition: str


def query_samples(place_id: np.ndarray, depth: np.ndarray, K: np.ndarray, pose: CameraPose,
                  places: Sequence[int], max_points: int) -> QuerySamples:
    """Sample points and box of the landmark ``places`` in a rendered query (``place_id``, ``depth`` [H, W]).

    Raises:
        ValueError: the landmark is not visible in the query.
    """
    mask = np.isin(place_id, np.asarray(places, dtype=np.int64))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("query_samples: the landmark is not visible")
    step = max(1, int(np.ceil(len(xs) / max_points)))
    uv = np.stack([xs[::step], ys[::step]], 1)
    points = unproject(depth, K, pose, uv)
    bbx = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return QuerySamples(points, place_id[uv[:, 1], uv[:, 0]].astype(np.int32), pose.center, bbx)


def pair_stats(query: QuerySamples, place_id: np.ndarray, K: np.ndarray, pose: CameraPose,
               landmark_places: Sequence[int], condition: str) -> PairStats:
    """``PairStats`` of a database image (its place-id buffer ``[H, W]``, ``K``, pose) for ``query``."""
    H, W = place_id.shape
    uv, z = project(query.points, K, pose)
    front = z > 1e-9
    px = np.full((len(z), 2), -1, np.int64)
    px[front] = np.round(uv[front]).astype(np.int64)
    inside = front & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    seen = np.zeros(len(z), bool)
    seen[inside] = place_id[px[inside, 1], px[inside, 0]] == query.place_ids[inside]
    center = query.points.mean(0)
    a, b = query.center - center, pose.center - center
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cos = float(a @ b) / max(na * nb, 1e-12)
    pixels = int(np.isin(place_id, np.asarray(landmark_places, dtype=np.int64)).sum())
    return PairStats(float(seen.mean()), float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
                     max(na, nb) / max(min(na, nb), 1e-12), pixels, condition)


@functools.lru_cache(maxsize=16)
def _canonical(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(condition_name(parse_condition(n)) for n in names)


def label_pair(stats: PairStats, conf: RevisitedConf) -> Label | None:
    """``easy`` / ``hard`` / ``junk`` / None (negative) of a pair by the thresholds of ``conf`` (module doc).

    ``stats.condition`` is a canonical condition name (``condition_name``); ``easy_conditions`` may be any
    spelling of one.
    """
    if (stats.overlap >= conf.easy_min_overlap and stats.angle_deg <= conf.easy_max_angle_deg
            and stats.scale <= conf.easy_max_scale and stats.condition in _canonical(conf.easy_conditions)):
        return "easy"
    if (stats.overlap >= conf.hard_min_overlap and stats.angle_deg <= conf.hard_max_angle_deg
            and stats.scale <= conf.hard_max_scale):
        return "hard"
    if stats.overlap > 0 or (conf.junk_min_pixels > 0 and stats.landmark_pixels >= conf.junk_min_pixels):
        return "junk"
    return None


def gnd_name(name: str) -> str:
    """``gnd_<name>.pkl``."""
    return f"gnd_{name}.pkl"


def image_path(root: str | Path, name: str) -> Path:
    """``<root>/jpg/<name>.jpg``."""
    return Path(root) / "jpg" / f"{name}.jpg"


def gnd_entry(bbx: Sequence[float], labels: Sequence[Label | None]) -> dict[str, list]:
    """One query's ``gnd`` dict from its box and the label of every database image (None: negative)."""
    entry: dict[str, list] = {"bbx": [float(v) for v in bbx]}
    for lab in LABELS:
        entry[lab] = [j for j, x in enumerate(labels) if x == lab]
    return entry


def write_gnd(path: str | Path, imlist: Sequence[str], qimlist: Sequence[str], gnd: Sequence[dict[str, list]]) -> Path:
    """Write a revisitop ground-truth pickle (protocol 2, builtins only) atomically; return ``path``."""
    if len(gnd) != len(qimlist):
        raise ValueError(f"write_gnd: {len(gnd)} gnd entries for {len(qimlist)} queries")
    data = {"imlist": [str(n) for n in imlist], "qimlist": [str(n) for n in qimlist],
            "gnd": [{k: list(v) for k, v in g.items()} for g in gnd]}
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(data, protocol=2))
    return Path(path)
