"""End-to-end Revisited Oxford / Paris evaluation: images + ``gnd_<dataset>.pkl`` -> Easy / Medium / Hard mAP.

``evaluate_landmarks("roxford5k", root, extractor="hfnet", rerank=100)`` reads revisitop's layout
(``root/jpg/<name>.jpg``, ``root/gnd_<dataset>.pkl``; the world's test set ``visloc data world landmarks
--split test`` writes the same, dataset ``rworld``), then:

1. crops each query to its ``bbx`` (``[x1, y1, x2, y2]``, ``int(round(b))``, PIL's ``crop``) and extracts it
   at the scale it has in the resized full image (``io.sources.crop_target_size``), as DELG and cirtorch;
   uncropped queries inflate mAP;
2. extracts database and queries with ``pipelines.extract`` into cache files (resumable; a database image
   that fails is listed and ranked last for every query);
3. searches every database image with a flat inner-product index (``retrieval.index``) and scores the
   ranking with the revisitop-exact metrics (``eval.retrieval``);
4. optionally re-ranks each query's shortlist by geometric verification (``retrieval.verify``, DELG's
   rules), once per protocol since the junk left out of the shortlist differs: ``medium_after_gv`` and
   ``hard_after_gv``, as DELG's ``metrics.txt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visloc.data.errors import DatasetError
from visloc.errors import InputError
from visloc.eval import retrieval
from visloc.eval.oxford_paris import OxfordParisGnd, load_gnd
from visloc.eval.predictions import default_cache_dir, file_digest
from visloc.features import EXTRACTORS
from visloc.io import features_h5
from visloc.io.atomic import atomic_write_text
from visloc.io.sources import Box, check_box, probe_size
from visloc.pipelines.common import conf_record
from visloc.pipelines.extract import extract_features
from visloc.retrieval.index import IndexConf, RetrievalIndex, global_descriptors
from visloc.retrieval.verify import VerifyConf, VerifyRule, rerank_verified, verify_pair

logger = logging.getLogger(__name__)
GV_PROTOCOLS: tuple[retrieval.RevisitedProtocol, ...] = ("medium", "hard")


@dataclass(frozen=True)
class RevisitopSet:
    """A dataset in revisitop's layout: the ground truth, image names relative to ``root/jpg`` and query boxes."""

    name: str
    root: Path
    gnd: OxfordParisGnd
    db_names: tuple[str, ...]
    query_names: tuple[str, ...]
    crops: dict[str, Box]

    @property
    def image_dir(self) -> Path:
        """``root/jpg``."""
        return self.root / "jpg"


def query_box(bbx: Sequence[float] | np.ndarray) -> list[int]:
    """Revisitop's box of a query: ``[int(round(b)) for b in bbx]``."""
    return [int(round(float(b))) for b in bbx]


def load_revisitop(dataset: str, root: str | Path) -> RevisitopSet:
    """Read ``root/gnd_<dataset>.pkl`` and check every query's image and ``bbx``.

    Raises:
        DatasetError: one line naming the file: no ground truth, not the revisited annotation, a query
            image missing, or a ``bbx`` missing or outside its image (naming the gnd file and the query).
    """
    if not dataset or "/" in dataset or "\\" in dataset or dataset.startswith("."):
        raise InputError(f"dataset: expected a name such as roxford5k, rparis6k or rworld, got {dataset!r}")
    root = Path(root)
    gnd = load_gnd(root / f"gnd_{dataset}.pkl")
    if not gnd.is_revisited:
        raise DatasetError(f"{gnd.path}: no 'easy' / 'hard' / 'junk' annotation (not a revisited ground truth)")
    crops: dict[str, Box] = {}
    for q, entry in zip(gnd.qimlist, gnd.gnd, strict=True):
        name = f"{q}.jpg"
        if "bbx" not in entry:
            raise DatasetError(f"{gnd.path}: query {q!r} has no 'bbx' (the revisited protocol crops queries)")
        size = probe_size(root / "jpg" / name)
        if size is None:
            raise DatasetError(f"{root / 'jpg' / name}: query image of {gnd.path.name} missing or unreadable")
        try:
            crops[name] = check_box(query_box(entry["bbx"]), size)
        except ValueError as e:
            raise DatasetError(f"{gnd.path}: query {q!r}: {e}") from None
    return RevisitopSet(dataset, root, gnd, tuple(f"{n}.jpg" for n in gnd.imlist),
                        tuple(f"{q}.jpg" for q in gnd.qimlist), crops)


@dataclass(frozen=True)
class FeatureFiles:
    """Cached features of one extractor conf: database and cropped queries; ``failed`` database names."""

    extractor: str
    db: Path
    queries: Path
    failed: tuple[tuple[str, str], ...]
    has_local: bool


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def extract_set(data: RevisitopSet, extractor: str, overrides: Sequence[str], cache_dir: Path, *,
                device: str | None, progress: bool, batch_size: int = 1,
                num_workers: int | None = None) -> FeatureFiles:
    """Extract (or reuse) the database and cropped query features of ``extractor`` under ``cache_dir``.

    The folder is keyed by the conf record and the weights' digests; the query file also by the boxes.
    """
    conf = EXTRACTORS.conf(extractor, overrides)
    caps = EXTRACTORS.capabilities(extractor, conf)
    key = _digest({"record": conf_record(extractor, conf), "weights": [file_digest(w) for w in caps.weights]})
    folder = Path(cache_dir) / "retrieval" / data.name / f"{extractor}-{key}"
    crop_key = _digest(sorted(data.crops.items()))
    kwargs: dict[str, Any] = {"extractor": extractor, "overrides": overrides, "device": device,
                              "progress": progress, "batch_size": batch_size, "num_workers": num_workers}
    db = extract_features(data.image_dir, folder / "db.h5", image_list=list(data.db_names), **kwargs)
    queries = extract_features(data.image_dir, folder / f"queries-{crop_key}.h5", image_list=list(data.query_names),
                               crops=data.crops, **kwargs)
    if queries.failed:
        name, reason = queries.failed[0]
        raise InputError(f"{data.image_dir / name}: query could not be extracted ({reason})")
    for name, reason in db.failed:
        logger.warning("%s: skipped (%s); ranked last for every query", data.image_dir / name, reason)
    return FeatureFiles(extractor, db.out, queries.out, tuple(db.failed), "local" in caps.outputs)


def global_ranking(data: RevisitopSet, files: FeatureFiles) -> tuple[np.ndarray, np.ndarray]:
    """``(ranking [nq, db], scores [nq, db])``: database indices best first, inner products per index.

    Every database image is searched (a flat index: exact); images without features come last, score -inf.
    """
    position = {n: i for i, n in enumerate(data.db_names)}
    done = set(features_h5.list_feature_names(files.db))
    db_names = [n for n in data.db_names if n in done]
    if not db_names:
        raise InputError(f"{files.db}: no database image has features")
    names, vectors = global_descriptors(files.db, db_names)
    index = RetrievalIndex.build(names, vectors, IndexConf(kind="flat"))
    _, qvec = global_descriptors(files.queries, list(data.query_names))
    if qvec.shape[1] != index.dim:
        raise InputError(f"{files.queries}: global descriptors of size {qvec.shape[1]}, the database's "
                         f"are of size {index.dim}")
    found, found_scores = index.search(qvec, len(index))
    missing = [i for i, n in enumerate(data.db_names) if n not in done]
    nq, ndb = len(data.query_names), len(data.db_names)
    ranking = np.empty((nq, ndb), np.int64)
    scores = np.full((nq, ndb), -np.inf)
    for q, (row, s) in enumerate(zip(found, found_scores, strict=True)):
        idx = np.array([position[n] for n in row], np.int64)
        ranking[q] = np.r_[idx, np.asarray(missing, np.int64)]
        scores[q, idx] = s[:len(idx)]
    return ranking, scores


@dataclass
class _InlierCache:
    """Inlier counts per (query, database index), each pair verified once across the protocols."""

    data: RevisitopSet
    files: FeatureFiles
    conf: VerifyConf
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.done = set(features_h5.list_feature_names(self.files.db))

    def query(self, q: int) -> Callable[[int], int]:
        """``inliers_of(j)`` of query ``q`` (its features loaded once)."""
        feats = features_h5.load_features(self.files.queries, self.data.query_names[q])

        def inliers_of(j: int) -> int:
            if (q, j) not in self.counts:
                name = self.data.db_names[j]
                self.counts[(q, j)] = verify_pair(feats, features_h5.load_features(self.files.db, name),
                                                  self.conf) if name in self.done else 0
            return self.counts[(q, j)]

        return inliers_of


def rerank_protocols(data: RevisitopSet, files: FeatureFiles, ranking: np.ndarray, scores: np.ndarray,
                     conf: VerifyConf, kappas: Sequence[int]) -> tuple[dict[str, retrieval.RetrievalResult], int]:
    """``{"medium_after_gv", "hard_after_gv"}`` metrics and the number of pairs verified."""
    cache = _InlierCache(data, files, conf)
    out: dict[str, retrieval.RetrievalResult] = {}
    for protocol in GV_PROTOCOLS:
        gnd = retrieval.revisited_gnd(data.gnd.gnd, protocol)
        ranks = np.empty_like(ranking.T)
        for q in range(len(data.query_names)):
            res = rerank_verified(ranking[q], scores[q], cache.query(q), conf, set(gnd[q]["junk"].tolist()))
            ranks[:, q] = res.order
            logger.info("gv %s %s: %d verified, %d with inliers", protocol, data.query_names[q], len(res.verified),
                        int((res.inliers > 0).sum()))
        out[f"{protocol}_after_gv"] = retrieval.compute_map(ranks, gnd, kappas, len(data.db_names))
    return out, len(cache.counts)


@dataclass(frozen=True)
class LandmarksReport:
    """Metrics of one end-to-end evaluation and what produced them."""

    dataset: str
    gnd: Path
    extractor: str
    num_queries: int
    num_database: int
    results: dict[str, retrieval.RetrievalResult]
    verify: VerifyConf | None = None
    rerank_extractor: str | None = None
    verified_pairs: int = 0
    failed: tuple[tuple[str, str], ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    def header(self) -> str:
        """One line: dataset, sizes, extractor and re-ranking."""
        gv = ""
        if self.verify is not None:
            gv = (f", top {self.verify.top} re-ranked by {self.rerank_extractor} affine inliers "
                  f"({self.verify.rule} rule)")
        failed = f", {len(self.failed)} database images without features" if self.failed else ""
        return (f"{self.dataset} ({self.gnd.name}: {self.num_queries} cropped queries, {self.num_database} "
                f"database images{failed}), {self.extractor} global descriptors{gv}")

    def text(self) -> str:
        """The header and ``retrieval.format_report`` (percent)."""
        return self.header() + "\n" + retrieval.format_report(self.results)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (fractions, ``nan`` as ``None``)."""
        verify = None if self.verify is None else {k: getattr(self.verify, k) for k in self.verify.__dataclass_fields__}
        return {"dataset": self.dataset, "gnd": str(self.gnd), "extractor": self.extractor,
                "num_queries": self.num_queries, "num_database": self.num_database,
                "rerank": 0 if self.verify is None else self.verify.top, "verify": verify,
                "rerank_extractor": self.rerank_extractor, "verified_pairs": self.verified_pairs,
                "failed": [list(f) for f in self.failed], "seconds": self.seconds,
                "results": retrieval.report_json(self.results)}

    def write(self, path: str | Path) -> Path:
        """Write the JSON report atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))


def evaluate_landmarks(dataset: str, root: str | Path, *, extractor: str, overrides: Sequence[str] = (),
                       rerank: int = 0, rerank_rule: VerifyRule = "delg", rerank_extractor: str | None = None,
                       rerank_overrides: Sequence[str] = (), rerank_distance: float = 1.0,
                       rerank_ratio: float | None = None, rerank_residual: float = 20.0, rerank_min_inliers: int = 15,
                       kappas: Sequence[int] = retrieval.KAPPAS, cache_dir: str | Path | None = None,
                       device: str | None = None, progress: bool = True) -> LandmarksReport:
    """Extract, search, optionally re-rank, and score a revisitop-layout dataset (module docstring).

    Args:
        dataset: ``roxford5k``, ``rparis6k``, ``rworld`` or any ``NAME`` with ``root/gnd_NAME.pkl``.
        root: the folder holding ``jpg/`` and the ground truth.
        extractor: registered extractor giving a global descriptor (``hfnet``, ``vlad-aliked``...).
        overrides: its conf overrides, ``key=value``.
        rerank: geometric verification of each query's first ``rerank`` non-junk images; 0: none.
        rerank_rule: ``delg`` or ``min-inliers`` (``retrieval.verify``).
        rerank_extractor: extractor of the local features to verify; None: ``extractor`` (it needs local features).
        rerank_overrides: its conf overrides.
        rerank_distance: L2 descriptor distance of a putative match (DELG 1.0, DELF 0.9).
        rerank_ratio: optional ratio test of putative matches.
        rerank_residual: RANSAC inlier threshold in pixels.
        rerank_min_inliers: with the ``min-inliers`` rule, the inliers that promote an image.
        kappas: cut-offs of mP@k and mR@k.
        cache_dir: feature cache root (``retrieval/<dataset>/<extractor>-<key>/``); None: ``$VISLOC_CACHE``
            or ``~/.cache/visloc``.
        device: ``cpu``, ``cuda`` or None (automatic).
        progress: show extraction progress bars.
    """
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise InputError(f"rerank: expected an integer >= 0, got {rerank!r}")
    verify = VerifyConf(top=rerank, rule=rerank_rule, distance=rerank_distance, ratio=rerank_ratio,
                        residual=rerank_residual, min_inliers=rerank_min_inliers) if rerank else None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data = load_revisitop(dataset, root)
    t0 = time.perf_counter()
    files = extract_set(data, extractor, tuple(overrides), cache, device=device, progress=progress)
    t1 = time.perf_counter()
    ranking, scores = global_ranking(data, files)
    results = retrieval.evaluate_revisited(ranking.T, data.gnd.gnd, kappas, len(data.db_names))
    seconds = {"extract": t1 - t0, "search": time.perf_counter() - t1}
    pairs, local = 0, None
    if verify is not None:
        local = _local_files(data, files, rerank_extractor, tuple(rerank_overrides), cache, device, progress)
        t2 = time.perf_counter()
        gv, pairs = rerank_protocols(data, local, ranking, scores, verify, kappas)
        results.update(gv)
        seconds["verify"] = time.perf_counter() - t2
    return LandmarksReport(dataset, data.gnd.path, extractor, len(data.query_names), len(data.db_names), results,
                           verify, None if local is None else local.extractor, pairs, files.failed, seconds)


def _local_files(data: RevisitopSet, files: FeatureFiles, extractor: str | None, overrides: Sequence[str],
                 cache: Path, device: str | None, progress: bool) -> FeatureFiles:
    """The feature files whose local features are verified: the global extractor's, or a second one's."""
    if extractor is None:
        if not files.has_local:
            raise InputError(f"rerank: {files.extractor} gives no local features; name one with --rerank-extractor")
        return files
    local = extract_set(data, extractor, overrides, cache, device=device, progress=progress)
    if not local.has_local:
        raise InputError(f"rerank-extractor: {extractor} gives no local features")
    return local

