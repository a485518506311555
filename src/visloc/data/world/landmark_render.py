"""Rendering one accepted landmark view (draw, render, reject, condition) and its record, for ``landmarks``.

See :mod:`visloc.data.world.landmarks` for the rejection rule and :mod:`visloc.data.world.landmark_views` for
the draws. Roles: ``view`` (a class image of train / val), ``query`` and ``db`` (the test set); each role has
its own random streams, so adding queries never changes a database image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from visloc.data.scene.places import Split
from visloc.data.scene.render import Frame
from visloc.data.world.base import job_rng
from visloc.data.world.landmark_views import (
    Coverage,
    Landmark,
    ViewSpec,
    composite,
    coverage,
    landmark_lookup,
    landmarks_of,
    sample_view,
)
from visloc.data.world.views import camera_matrix, condition_image, render_clean

if TYPE_CHECKING:
    from visloc.data.world.landmarks import LandmarksConf

KIND = "landmarks"
ROLES = {"view": 0, "query": 1, "db": 2}


@dataclass(frozen=True)
class ViewRecord:
    """What is kept of one view (``.views/`` while the job runs, ``views.csv`` at its end).

    Attributes:
        name: image path relative to the dataset folder.
        landmark_id: the landmark the view was drawn for.
        role: ``view``, ``query`` or ``db``.
        view: index of the view within its landmark and role.
        accepted: False when every draw was rejected (no image).
        attempt: the accepted draw.
        condition: canonical condition name.
        distance_m, angle_deg, height_m: horizontal camera-target distance, angle off the facade normal, height.
        occluded: an occluding board was drawn.
        fraction, share: coverage of the landmark (``landmark_views.coverage``).
        qvec, tvec: ``cam_from_world`` (w, x, y, z) and translation.
        places: ids of the places visible, increasing.
        bbx: queries: the landmark's box (x0, y0, x1, y1), pixel edges.
        stats: database views: ``[query name, overlap, angle_deg, scale, landmark_pixels]`` per query that the
            view shows anything of (``revisited.pair_stats``).
    """

    name: str
    landmark_id: int
    role: str
    view: int
    accepted: bool
    attempt: int = -1
    condition: str = ""
    distance_m: float = 0.0
    angle_deg: float = 0.0
    height_m: float = 0.0
    occluded: bool = False
    fraction: float = 0.0
    share: float = 0.0
    qvec: tuple[float, ...] = ()
    tvec: tuple[float, ...] = ()
    places: tuple[int, ...] = ()
    bbx: tuple[float, ...] = ()
    stats: tuple[tuple[Any, ...], ...] = field(default=())

    CSV_FIELDS: ClassVar[tuple[str, ...]] = (
        "landmark_id", "role", "condition", "distance_m", "angle_deg", "height_m", "occluded", "fraction", "share",
        "qw", "qx", "qy", "qz", "tx", "ty", "tz", "places")

    @classmethod
    def given_up(cls, name: str, landmark_id: int, role: str, view: int) -> ViewRecord:
        """The record of a view whose every draw was rejected."""
        return cls(name, landmark_id, role, view, False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ViewRecord:
        """Inverse of :meth:`to_json`."""
        tup = {k: tuple(data[k]) for k in ("qvec", "tvec", "places", "bbx")}
        return cls(**{**data, **tup, "stats": tuple(tuple(s) for s in data["stats"])})

    def csv_row(self) -> list[str]:
        """The ``views.csv`` fields after the image key (floats rounded, so the bytes are stable)."""
        return [str(self.landmark_id), self.role, self.condition, f"{self.distance_m:.3f}", f"{self.angle_deg:.2f}",
                f"{self.height_m:.3f}", str(int(self.occluded)), f"{self.fraction:.4f}", f"{self.share:.4f}",
                *(f"{v:.9f}" for v in self.qvec), *(f"{v:.6f}" for v in self.tvec),
                " ".join(str(p) for p in self.places)]


@dataclass(frozen=True, eq=False)
class Rendered:
    """An accepted draw: the frame (after the occluder), the conditioned image, the draw, its coverage."""

    frame: Frame
    image: np.ndarray
    spec: ViewSpec
    coverage: Coverage
    attempt: int
    condition: str
    landmark_id: int
    role: str
    view: int

    def record(self, name: str, **extra: Any) -> ViewRecord:
        """The :class:`ViewRecord` of this view written as ``name``."""
        pose = self.frame.pose
        ids, counts = np.unique(self.frame.place_id, return_counts=True)
        places = tuple(int(i) for i, c in zip(ids, counts, strict=True) if i >= 0 and c > 0)
        return ViewRecord(name, self.landmark_id, self.role, self.view, True, self.attempt, self.condition,
                          self.spec.distance_m, self.spec.angle_deg, self.spec.height_m,
                          self.spec.occluder is not None, self.coverage.fraction, self.coverage.share,
                          tuple(float(v) for v in pose.qvec), tuple(float(v) for v in pose.t), places, **extra)


@dataclass(eq=False)
class Renderer:
    """Renders the views of one job: the conf, the split, the city per season (made when first needed)."""

    conf: LandmarksConf
    split: Split
    landmarks: list[Landmark]
    lookup: np.ndarray
    boards: tuple[Any, ...]
    K: np.ndarray
    cities: dict[str, Any]

    @classmethod
    def build(cls, conf: LandmarksConf, split: Split) -> Renderer:
        """Build the summer city and what every view needs of it."""
        from visloc.data.scene.city import build_city

        city = build_city(conf.city, "summer")
        board_places = {p.id for p in city.places if p.kind == "board" and p.split == split}
        boards: dict[int, Any] = {}
        for plane in city.planes:
            if plane.place_id in board_places:
                boards.setdefault(plane.place_id, plane)
        return cls(conf, split, landmarks_of(city, split), landmark_lookup(city),
                   tuple(boards[k] for k in sorted(boards)), camera_matrix(city), {"summer": city})

    def city(self, season: str) -> Any:
        """The city in ``season`` (same places and ids, other ground and board textures)."""
        if season not in self.cities:
            from visloc.data.scene.city import build_city

            self.cities[season] = build_city(self.conf.city, season)
        return self.cities[season]

    def condition(self, landmark: Landmark, role: str, view: int) -> str:
        """The canonical condition name of a view (queries: ``revisited.query_condition``)."""
        from visloc.data.scene.conditions import condition_name, parse_condition

        if role == "query":
            return condition_name(parse_condition(self.conf.revisited.query_condition))
        rng = job_rng(self.conf.city.seed, KIND, self.split, ROLES[role], landmark.id, view)
        names = (self.conf.revisited.db_conditions if role == "db" else ()) or self.conf.conditions
        return condition_name(parse_condition(names[int(rng.integers(len(names)))]))

    def render(self, landmark: Landmark, role: str, view: int) -> Rendered | None:
        """The first accepted draw of a view (module docstring of ``landmarks``), or None after ``max_tries``."""
        from visloc.data.scene.conditions import parse_condition

        conf = self.conf
        vconf = conf.query_views if role == "query" else conf.views
        cond_name = self.condition(landmark, role, view)
        cond = parse_condition(cond_name)
        city = self.city(cond.season)
        for attempt in range(conf.max_tries):
            rng = job_rng(conf.city.seed, KIND, self.split, ROLES[role], landmark.id, view, attempt)
            spec = sample_view(city, landmark, rng, vconf, self.boards)
            frame = render_clean(city, spec.pose, self.split, K=self.K, max_foreign=conf.max_foreign)
            if frame is None:
                continue
            frame = composite(frame, city, spec.occluder)
            cov = coverage(frame.place_id, self.lookup, landmark.id)
            if cov.fraction < conf.min_landmark_fraction or cov.share < conf.min_landmark_share:
                continue
            image = condition_image(frame, cond, rng)
            return Rendered(frame, image, spec, cov, attempt, cond_name, landmark.id, role, view)
        return None
