"""Localize query images against a map built by ``map_build`` (``visloc localize``).

Outputs, each written atomically:

- ``out``: the visuallocalization.net format, ``name qw qx qy qz tx ty tz`` (``cam_from_world``, as
  COLMAP), one line per *localized* query. A query that cannot be localized gets no line.
- ``log`` (default ``<out without suffix>.log.jsonl``): one JSON object per query, localized or not:
  ``success``, ``reason``, ``retrieved``, ``places``, ``place``, ``num_matches``, ``num_inliers``,
  ``timings`` per stage in seconds (``eval.localization.STAGES``: ``global`` descriptor + retrieval,
  ``local`` features, ``matching``, ``pnp``; extraction times are the run's mean per image, since the
  extractor runs over all queries first), ``camera``, and the pose (``qvec``, ``tvec``).
- Query features beside ``out`` (``<stem>.features.h5``, ``<stem>.global.h5`` when the map's retrieval
  uses another extractor), so an interrupted run resumes its extraction.

Query intrinsics come from ``cameras`` (``name MODEL W H params...``); a query without one uses the
map's camera when the map has exactly one and the sizes agree, else ``SIMPLE_RADIAL`` with focal
``1.2 * max(W, H)`` and the focal length estimated with the pose. Unreadable images are skipped and
listed; an error on one query fails that query only.

Before any work: ``out`` and ``log`` must be text files (or absent) in writable folders, the query
names must hold no whitespace, and the map's COLMAP model is checked (``colmap_files``); the job
holds ``out``'s writer lock (``io.locks``) for its whole life.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from visloc.eval.localization import STAGES
from visloc.io import features_h5
from visloc.io.atomic import atomic_write_text
from visloc.io.images import list_images, read_image
from visloc.io.locks import output_lock
from visloc.io.names import check_names
from visloc.io.outputs import check_text_output
from visloc.io.poses import Camera, read_cameras, write_poses
from visloc.localization.colmap import default_camera
from visloc.localization.colmap_files import read_reconstruction
from visloc.localization.localize import Localizer, LocalizerConf, PairMatching, QueryResult
from visloc.localization.pair_matching import DensePairs, Query, SparsePairs
from visloc.matching import MATCHERS
from visloc.pipelines.common import pick_device
from visloc.pipelines.extract import extract_features
from visloc.pipelines.map_build import FORMAT, VERSION, MapError, MapFiles
from visloc.retrieval.index import RetrievalIndex
from visloc.types import Features

logger = logging.getLogger(__name__)


@dataclass
class LocalizeSummary:
    """What ``localize_queries`` did."""

    out: Path
    log: Path
    results: list[QueryResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_localized(self) -> int:
        """Queries with a pose."""
        return sum(r.ok for r in self.results)

    def mean_seconds(self) -> dict[str, float]:
        """Mean time per query of each stage."""
        n = max(len(self.results), 1)
        return {s: sum(r.timings.get(s, 0.0) for r in self.results) / n for s in STAGES}

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.mean_seconds().items())
        out = [f"localize: {self.num_localized}/{len(self.results)} queries localized, {len(self.skipped)} skipped "
               f"-> {self.out} (log {self.log})", f"  mean per query: {times}"]
        out += [f"  failed {r.name}: {r.reason}" for r in self.results if not r.ok]
        return out + [f"  skipped {name}: {reason}" for name, reason in self.skipped]


def read_map_record(map_dir: str | Path) -> tuple[dict[str, Any], MapFiles]:
    """``map.json`` of a map and the paths of its parts (relative names resolved against ``map_dir``)."""
    root = Path(map_dir)
    path = root / "map.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise MapError(f"{path}: not found; build the map with 'visloc map build'") from None
    except (OSError, json.JSONDecodeError) as e:
        raise MapError(f"{path}: unreadable map record ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise MapError(f"{path}: not a visloc map record (format {FORMAT!r} version {VERSION})")
    missing = [k for k in ("files", "extractor", "retrieval", "matcher") if k not in record]
    names = record.get("files")
    parts = ("features", "global_features", "matches", "pairs", "index", "database", "model", "vocabulary")
    if not missing and isinstance(names, dict):
        missing = [f"files.{k}" for k in parts if not isinstance(names.get(k), str)]
    if missing or not isinstance(names, dict):
        raise MapError(f"{path}: incomplete map record (no {', '.join(missing) or 'files'}); rebuild the map")
    files = MapFiles(root, **{k: root / names[k] for k in parts}, record=path)
    return record, files


def check_map_parts(files: MapFiles) -> None:
    """Raise ``MapError`` naming the first part localization reads that the map folder lacks."""
    from visloc.io import shards

    for what, path in (("database features", files.features), ("retrieval index", files.index)):
        if not (path.is_file() or shards.shards_dir(path).is_dir()):
            raise MapError(f"{path}: the map's {what} file is missing; rebuild the map with 'visloc map build' "
                           f"(or copy the whole map folder)")


def _portable(conf: dict[str, Any], files: MapFiles) -> dict[str, Any]:
    """A recorded conf whose vocabulary moved with the map folder points at the map's copy."""
    vocab = conf.get("vocabulary")
    if vocab and not Path(vocab).exists() and files.vocabulary.exists():
        return {**conf, "vocabulary": str(files.vocabulary)}
    return conf


class _FeatureCache:
    """Database features read on demand, the ``size`` most recent kept in memory."""

    def __init__(self, path: Path, size: int = 512) -> None:
        self.path, self.size = path, size
        self._cache: OrderedDict[str, Features] = OrderedDict()

    def __call__(self, name: str) -> Features:
        if name in self._cache:
            self._cache.move_to_end(name)
        else:
            self._cache[name] = features_h5.load_features(self.path, name)
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return self._cache[name]


def _query_camera(name: str, feats: Features, cameras: dict[str, Camera],
                  map_cameras: list[Camera]) -> tuple[Camera, bool]:
    """The query's camera and whether its focal length must be estimated."""
    if name in cameras:
        return cameras[name], False
    w, h = feats.image_size
    if len(map_cameras) == 1 and (map_cameras[0].width, map_cameras[0].height) == (w, h):
        return map_cameras[0], False
    return default_camera(w, h), True


def _extract_queries(record: dict[str, Any], files: MapFiles, queries: Path, names: list[str], out: Path,
                     device: str | None, progress: bool) -> tuple[Path | None, Path, list[tuple[str, str]], dict]:
    """Extract the queries with the map's confs; returns local and global files, failures, seconds per stage.

    A map matched by an image matcher has no local extractor (``record["extractor"]`` is None): only
    the global descriptors are extracted, and the local file is None.
    """
    start = time.perf_counter()
    ext = record["extractor"]
    local: Path | None = None
    failed: list[tuple[str, str]] = []
    if ext is not None:
        local = out.with_name(out.stem + ".features.h5")
        summary = extract_features(queries, local, extractor=ext["name"], overrides=_portable(ext["conf"], files),
                                   image_list=names, device=device, progress=progress)
        failed = list(summary.failed)
    glob = local
    seconds = {"local": time.perf_counter() - start, "global": 0.0}
    ret = record["retrieval"]
    if ret != ext:
        start = time.perf_counter()
        glob = out.with_name(out.stem + ".global.h5")
        ok = [n for n in names if n not in dict(failed)]
        extra = extract_features(queries, glob, extractor=ret["name"], overrides=_portable(ret["conf"], files),
                                 image_list=ok, device=device, progress=progress)
        failed += extra.failed
        seconds["global"] = time.perf_counter() - start
    if glob is None:
        raise MapError(f"{files.record}: records neither a local nor a retrieval extractor")
    return local, glob, failed, seconds


def localize_queries(map_dir: str | Path, queries: str | Path, out: str | Path, *, cameras: str | Path | None = None,
                     conf: LocalizerConf | None = None, image_list: list[str] | None = None,
                     log: str | Path | None = None, device: str | None = None,
                     progress: bool = True) -> LocalizeSummary:
    """Localize every image below ``queries`` (or ``image_list``) against the map in ``map_dir``.

    Args:
        map_dir: folder written by ``build_map``.
        queries: query image root; names are paths relative to it.
        out: poses file to write (``name qw qx qy qz tx ty tz``, localized queries only).
        cameras: ``name MODEL W H params...`` of the queries (see the module docstring when missing).
        conf: localization settings.
        image_list: query names relative to ``queries``; default: every image found.
        log: JSON-lines log; default ``<out without suffix>.log.jsonl``.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show progress bars.
    """
    record, files = read_map_record(map_dir)
    queries, out = Path(queries), Path(out)
    log = Path(log) if log is not None else out.with_suffix(".log.jsonl")
    check_text_output(out, "poses")
    check_text_output(log, "log", "--log")
    names = list(image_list) if image_list is not None else list_images(queries)
    check_names(names, queries, "rename them")  # else their poses would be computed, then not written
    cams = read_cameras(cameras) if cameras is not None else {}
    rec = read_reconstruction(files.model)  # checked: a damaged map fails before any query is extracted
    check_map_parts(files)
    with output_lock(out):
        local, glob, skipped, extract_s = _extract_queries(record, files, queries, names, out, device, progress)
        dev = pick_device(device)
        localizer = Localizer(rec, _pair_matching(record, files, dev), RetrievalIndex.load(files.index), conf)
        map_cameras = [Camera(c.model.name, c.width, c.height, tuple(c.params)) for c in rec.cameras.values()]
        todo = [n for n in names if n not in dict(skipped)]
        summary = LocalizeSummary(out, log, skipped=skipped)
        for name in tqdm(todo, desc="localize", disable=not progress, unit="query"):
            summary.results.append(_localize_one(localizer, name, queries, local, glob, cams, map_cameras))
            timings = summary.results[-1].timings
            for stage, total in extract_s.items():
                timings[stage] = timings.get(stage, 0.0) + total / max(len(todo), 1)
        write_poses(out, {r.name: r.pose for r in summary.results if r.pose is not None})
        atomic_write_text(log, "".join(json.dumps(r.record()) + "\n" for r in summary.results))
    return summary


def _pair_matching(record: dict[str, Any], files: MapFiles, device: torch.device) -> PairMatching:
    """The map's matcher as a pair-matching strategy: stored features, or images for an image matcher."""
    name, conf = record["matcher"]["name"], record["matcher"]["conf"]
    matcher = MATCHERS.build(name, conf).to(device)
    if MATCHERS.kind_of(name) == "feature":
        return SparsePairs(_FeatureCache(files.features), matcher, device)
    root = Path(record["image_root"])
    keypoints = _FeatureCache(files.features)
    return DensePairs(lambda n: read_image(root / n), lambda n: keypoints(n).keypoints.numpy(), matcher,
                      float(record.get("dense", {}).get("max_error", 2.0)), device)


def _localize_one(localizer: Localizer, name: str, queries: Path, local: Path | None, glob: Path,
                  cams: dict[str, Camera], map_cameras: list[Camera]) -> QueryResult:
    """One query; an error (unreadable features or image, a COLMAP failure) fails this query only."""
    try:
        if local is not None:
            feats = features_h5.load_features(local, name)
            image = None
        else:
            feats = features_h5.load_features(glob, name)
            image = read_image(queries / name)
        if glob != local:
            g = features_h5.load_features(glob, name).global_descriptor
            if g is None:
                raise features_h5.FeatureStoreError(f"{glob}: no global descriptor for image {name!r}")
            feats = feats.with_global(g)
        camera, estimate_focal = _query_camera(name, feats, cams, map_cameras)
        return localizer.localize(Query(name, feats, image), camera, estimate_focal)
    except (ValueError, RuntimeError, OSError) as e:
        logger.warning("%s: localization failed: %s", name, e)
        return QueryResult(name, reason=f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
