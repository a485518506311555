"""``landmarks`` on the test split: a Revisited-Oxford-style retrieval set (:mod:`visloc.data.world.revisited`).

Of the test split's landmarks, ``revisited.query_landmarks`` (the first of a seeded permutation; 0: all) are
*query landmarks*: each gets ``queries_per_landmark`` queries (``query_views``: frontal, eye height, no occluder,
``query_condition``) and ``db_views_per_landmark`` database views (``views`` as the class images of train, under
``revisited.db_conditions``). Every other test landmark is a *distractor*: ``distractor_views_per_landmark``
database views. The same rejection rule as train applies to every image (another split in view, too little
landmark).

Each query keeps its sample points (``revisited.query_samples``); each database view is compared with every
query whose landmark it shows (``revisited.pair_stats``), distractors included, so a distractor view that
happens to show a query landmark is labelled by the same geometry. ``gnd_<name>.pkl`` lists ``imlist`` (database
names, sorted) and ``qimlist`` (query names, sorted; a query left with no easy or hard image is dropped, as
revisitop would skip it), each query's ``bbx`` and its ``easy`` / ``hard`` / ``junk`` from
``revisited.label_pair``. Images are ``jpg/<name>_q<landmark>_<k>.jpg`` (queries) and ``jpg/<name>_<landmark>_<k>
.jpg`` (database).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from visloc.data.world.base import ItemWriter, job_rng, progress
from visloc.data.world.landmark_render import KIND, Rendered, Renderer, ViewRecord
from visloc.data.world.landmark_views import Landmark
from visloc.data.world.revisited import (
    PairStats,
    QuerySamples,
    gnd_entry,
    gnd_name,
    label_pair,
    pair_stats,
    query_samples,
    write_gnd,
)
from visloc.io.poses import CameraPose

if TYPE_CHECKING:
    from visloc.data.world.landmarks import LandmarksConf, LandmarksFiles

logger = logging.getLogger(__name__)


def planned_test_images(conf: LandmarksConf, num_landmarks: int) -> int:
    """Images the test set asks for (queries + database views) with ``num_landmarks`` test landmarks."""
    r = conf.revisited
    nq = min(r.query_landmarks or num_landmarks, num_landmarks)
    return nq * (r.queries_per_landmark + r.db_views_per_landmark) + (num_landmarks - nq) * \
        r.distractor_views_per_landmark


def query_landmarks(renderer: Renderer) -> list[Landmark]:
    """The query landmarks (module docstring), by increasing id."""
    lms = renderer.landmarks
    n = min(renderer.conf.revisited.query_landmarks or len(lms), len(lms))
    perm = job_rng(renderer.conf.city.seed, KIND, renderer.split, 99).permutation(len(lms))
    return sorted((lms[i] for i in perm[:n]), key=lambda lm: lm.id)


def _samples_name(landmark: Landmark, k: int) -> str:
    from visloc.data.world.landmarks import VIEWS_DIR

    return f"{VIEWS_DIR}/query/{landmark.id}/{k:04d}.npy"


def _queries(renderer: Renderer, writer: ItemWriter, show: bool) -> dict[str, tuple[ViewRecord, QuerySamples]]:
    from visloc.data.world.landmarks import view_record

    r = renderer.conf.revisited
    out: dict[str, tuple[ViewRecord, QuerySamples]] = {}
    jobs = [(lm, k) for lm in query_landmarks(renderer) for k in range(r.queries_per_landmark)]
    for lm, k in progress(jobs, total=len(jobs), desc="landmarks test queries", enabled=show):
        def keep(rendered: Rendered, lm: Landmark = lm, k: int = k) -> dict[str, Any]:
            f = rendered.frame
            q = query_samples(f.place_id, f.depth, f.K, f.pose, lm.places, r.sample_points)
            table = np.concatenate([q.points, q.place_ids[:, None].astype(np.float64)], 1)
            writer.write_npy(_samples_name(lm, k), table)
            return {"bbx": q.bbx}

        rec = view_record(writer, renderer, lm, "query", k, f"jpg/{r.name}_q{lm.id}_{k}.jpg", keep)
        if rec.accepted:
            table = np.load(writer.path(_samples_name(lm, k)), allow_pickle=False)
            pose, b = CameraPose.from_qvec(rec.qvec, rec.tvec), rec.bbx
            out[rec.name] = (rec, QuerySamples(table[:, :3], table[:, 3].astype(np.int32), pose.center,
                                               (b[0], b[1], b[2], b[3])))
    return out


def _database(renderer: Renderer, writer: ItemWriter, queries: dict[str, tuple[ViewRecord, QuerySamples]],
              show: bool) -> list[ViewRecord]:
    from visloc.data.world.landmarks import view_record

    r = renderer.conf.revisited
    qland = {lm.id for lm in query_landmarks(renderer)}
    places = {lm.id: lm.places for lm in renderer.landmarks}
    jobs = [(lm, k) for lm in renderer.landmarks
            for k in range(r.db_views_per_landmark if lm.id in qland else r.distractor_views_per_landmark)]

    def compare(rendered: Rendered) -> dict[str, Any]:
        f = rendered.frame
        shown = set(np.unique(renderer.lookup[f.place_id.astype(np.int64) + 1]).tolist())
        stats = []
        for qname, (qrec, q) in sorted(queries.items()):
            if qrec.landmark_id in shown:
                s = pair_stats(q, f.place_id, f.K, f.pose, places[qrec.landmark_id], rendered.condition)
                stats.append((qname, s.overlap, s.angle_deg, s.scale, s.landmark_pixels))
        return {"stats": tuple(stats)}

    records = []
    for lm, k in progress(jobs, total=len(jobs), desc="landmarks test database", enabled=show):
        rec = view_record(writer, renderer, lm, "db", k, f"jpg/{r.name}_{lm.id}_{k}.jpg", compare)
        if rec.accepted:
            records.append(rec)
    return records


def write_test_set(renderer: Renderer, writer: ItemWriter, show: bool) -> tuple[LandmarksFiles, dict[str, Any]]:
    """Render queries, then the database, then write ``gnd_<name>.pkl`` and ``views.csv`` (module docstring)."""
    from visloc.data.world.landmarks import VIEWS_CSV, LandmarksFiles, write_views_csv

    r = renderer.conf.revisited
    queries = _queries(renderer, writer, show)
    db = sorted(_database(renderer, writer, queries, show), key=lambda rec: rec.name)
    cond_of = {rec.name: rec.condition for rec in db}
    imlist = [rec.name for rec in db]
    labels: dict[str, list[Any]] = {q: [None] * len(db) for q in queries}
    for j, rec in enumerate(db):
        for qname, overlap, angle, scale, pixels in rec.stats:
            if qname in labels:
                labels[qname][j] = label_pair(PairStats(overlap, angle, scale, pixels, cond_of[rec.name]), r)
    kept = sorted(q for q in queries if any(x in ("easy", "hard") for x in labels[q]))
    for q in sorted(set(queries) - set(kept)):
        logger.info("landmarks test: query %s has no easy or hard database image, dropped", q)
    gnd = [gnd_entry(queries[q][1].bbx, labels[q]) for q in kept]
    stem = [n.removeprefix("jpg/").removesuffix(".jpg") for n in imlist]
    qstem = [n.removeprefix("jpg/").removesuffix(".jpg") for n in kept]
    for q in sorted(set(queries) - set(kept)):
        writer.path(q).unlink(missing_ok=True)
    write_views_csv(writer.root / VIEWS_CSV, [queries[q][0] for q in kept] + db, "name")
    index = write_gnd(writer.root / gnd_name(r.name), stem, qstem, gnd)
    n_classes = len({queries[q][0].landmark_id for q in kept})
    extra = {"layout": "revisited", "index": index.name, "images": len(stem) + len(qstem), "classes": n_classes,
             "tars": [], "queries": len(qstem), "database": len(stem)}
    return LandmarksFiles(writer.root, "revisited", index, len(stem) + len(qstem), n_classes, (),
                          writer.summary), extra
