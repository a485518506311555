"""Build a localization map from database images: extract, select pairs, match, triangulate or run SfM.

With known poses (``--poses`` + ``--cameras``) pairs are chosen from the poses (nearest cameras looking
the same way) and the verified matches are triangulated with the poses fixed
(``localization.triangulation``); without poses, pairs come from retrieval and COLMAP's incremental
mapping recovers the poses (``localization.sfm``). Every step is resumable (features and matches are
staged per image / pair), and an existing feature or match file can be given to reuse its content.

MAP_DIR layout (everything ``visloc localize --map MAP_DIR`` needs)::

    map.json             format, image root, the resolved extractor / matcher / retrieval confs, the
                         names of the files below, triangulation or SfM conf, counts and timings
    sfm/                 the COLMAP model (cameras.bin, images.bin, points3D.bin, rigs.bin, frames.bin)
    database.db          the COLMAP database it was built from (keypoints, matches, two-view geometries)
    features.h5          local features of the database images (hloc layout, pixel-centre-at-0)
    global.h5            global descriptors, only when the local extractor gives none
    matches.h5           matches of the pairs (hloc layout)
    pairs.txt            the matched pairs
    global.index         faiss index of the global descriptors (+ .names.txt, .json)
    vocab.pt             the VLAD vocabulary learned from the database images' local descriptors (ALIKED's
                         for vlad-aliked, XFeat's for vlad-xfeat; extracted once: ``pipelines.extract_vlad``),
                         when one was needed
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visloc.conf import conf_to_dict, merge, parse_overrides
from visloc.errors import InputError, VislocError
from visloc.features import EXTRACTORS
from visloc.io import features_h5
from visloc.io.atomic import atomic_write_text
from visloc.io.images import list_images
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.io.pairs import read_pairs, write_pairs
from visloc.io.poses import Camera, read_cameras, read_poses
from visloc.localization import colmap
from visloc.localization.covisibility import pairs_from_poses
from visloc.localization.sfm import SfMConf, reconstruct
from visloc.localization.triangulation import TriangulationConf, triangulate, verify_with_poses
from visloc.matching import MATCHERS
from visloc.pipelines.extract import ATTR as EXTRACTOR_ATTR
from visloc.pipelines.extract import extract_features
from visloc.pipelines.extract_vlad import extract_vlad_features
from visloc.pipelines.map_outputs import check_map_outputs
from visloc.pipelines.match_dense import QuantizeConf, match_dense
from visloc.pipelines.match_features import match_features
from visloc.pipelines.retrieve import build_index
from visloc.retrieval.index import RetrievalIndex, global_descriptors, pairs_from_retrieval

logger = logging.getLogger(__name__)
FORMAT, VERSION = "visloc-map", 1
DEFAULT_EXTRACTOR, DEFAULT_MATCHER, DEFAULT_RETRIEVAL = "vlad-aliked", "lightglue", "vlad-aliked"
Overrides = Mapping[str, Any] | Sequence[str]
#: a vocabulary learned by ``build_map`` uses at most this many database images (evenly spaced)
VOCAB_IMAGES = 100


class MapError(VislocError, ValueError):
    """A map that cannot be built or read (bad inputs, missing files)."""


@dataclass(frozen=True)
class MapFiles:
    """Paths of a map's parts (see the module docstring)."""

    root: Path
    features: Path
    global_features: Path
    matches: Path
    pairs: Path
    index: Path
    database: Path
    model: Path
    vocabulary: Path
    record: Path

    @classmethod
    def of(cls, root: str | Path, features: str | Path | None = None, matches: str | Path | None = None) -> MapFiles:
        """The default layout of ``root``, with optional user feature / match files."""
        root = Path(root)
        return cls(root, Path(features) if features else root / "features.h5", root / "global.h5",
                   Path(matches) if matches else root / "matches.h5", root / "pairs.txt", root / "global.index",
                   root / "database.db", root / "sfm", root / "vocab.pt", root / "map.json")


@dataclass
class MapSummary:
    """What ``build_map`` did."""

    out: Path
    num_images: int
    num_registered: int
    num_points: int
    num_pairs: int
    mode: str
    seconds: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        out = [f"map ({self.mode}): {self.num_registered}/{self.num_images} images, {self.num_points} 3D points, "
               f"{self.num_pairs} pairs -> {self.out}", f"  time: {times}"]
        return out + [f"  skipped {name}: {reason}" for name, reason in self.failed]


def _overrides(ov: Overrides) -> dict[str, Any]:
    return dict(ov) if isinstance(ov, Mapping) else parse_overrides(list(ov))


def _extract_with(name: str, overrides: dict[str, Any], out: Path, files: MapFiles, images: Path, names: list[str],
                  device: str | None, progress: bool, batch_size: int) -> tuple[dict[str, Any], JobSummary]:
    """Extract ``names`` with ``name`` into ``out``; returns the overrides ``out`` records and the summary.

    An extractor that needs a VLAD vocabulary (``vocabulary`` unset) gets the map's, learned from the
    descriptors of this extraction (``pipelines.extract_vlad``: each image goes through the local network once).
    """
    conf = EXTRACTORS.conf(name, overrides)
    if "vocabulary" in EXTRACTORS.capabilities(name, conf).needs:
        return extract_vlad_features(images, out, files.vocabulary, overrides=overrides, image_list=names,
                                     vocab_images=VOCAB_IMAGES, device=device, progress=progress,
                                     batch_size=batch_size, extractor=name)
    summary = extract_features(images, out, extractor=name, overrides=overrides, image_list=names, device=device,
                               progress=progress, batch_size=batch_size)
    return overrides, summary


def _recorded_extractor(features: Path) -> tuple[str, dict[str, Any]] | None:
    """``(name, conf)`` recorded in an existing feature file, else None."""
    record = features_h5.read_attrs(features).get(EXTRACTOR_ATTR)
    if record is None:
        return None
    data = json.loads(record)
    return str(data["name"]), dict(data["conf"])


def _has_global(features: Path, name: str) -> bool:
    return "global_descriptor" in features_h5.read_features(features, name)


def _inputs(images: Path, poses: str | Path | None,
            cameras: str | Path | None) -> tuple[list[str], dict | None, dict[str, Camera]]:
    """Image names to map, their poses (or None) and the cameras read (``build_map`` guesses the others)."""
    names = list_images(images)
    if poses is not None and cameras is None:
        raise MapError("--poses needs --cameras (intrinsics of each database image)")
    pose_map = read_poses(poses) if poses is not None else None
    cams = read_cameras(cameras) if cameras is not None else {}
    if pose_map is not None:
        missing = [n for n in pose_map if n not in names]
        if missing:
            raise MapError(f"{poses}: {len(missing)} posed images are not below {images}, e.g. {missing[0]!r}")
        if len(names) > len(pose_map):
            logger.warning("%s: %d images have no pose in %s and are not mapped", images, len(names) - len(pose_map),
                           poses)
        names = [n for n in names if n in pose_map]
        no_cam = [n for n in names if n not in cams]
        if no_cam:
            raise MapError(f"{cameras}: no camera for {len(no_cam)} posed images, e.g. {no_cam[0]!r}")
    if len(names) < 2:
        raise MapError(f"{images}: a map needs at least 2 images, found {len(names)}")
    return names, pose_map, cams


def _extract(images: Path, names: list[str], files: MapFiles, extractor: str | None, overrides: Overrides,
             retrieval: str, retrieval_overrides: Overrides, device: str | None,
             progress: bool, batch_size: int) -> tuple[dict[str, Any], Path, list[tuple[str, str]]]:
    """Local (and, when those lack them, global) features; returns the confs, the global file and failures."""
    recorded = _recorded_extractor(files.features)
    ov = _overrides(overrides)
    if extractor is None and recorded is not None:
        extractor, ov = recorded[0], merge(recorded[1], ov)
    extractor = extractor or DEFAULT_EXTRACTOR
    ov, summary = _extract_with(extractor, ov, files.features, files, images, names, device, progress, batch_size)
    failed = list(summary.failed)
    ok = [n for n in names if n not in dict(failed)]
    confs = {"extractor": {"name": extractor, "conf": conf_to_dict(EXTRACTORS.conf(extractor, ov))}}
    global_file = files.features
    if ok and not _has_global(files.features, ok[0]):
        rov, extra = _extract_with(retrieval, _overrides(retrieval_overrides), files.global_features, files, images,
                                   ok, device, progress, batch_size)
        failed += extra.failed
        global_file = files.global_features
        confs["retrieval"] = {"name": retrieval, "conf": conf_to_dict(EXTRACTORS.conf(retrieval, rov))}
    else:
        confs["retrieval"] = {"name": extractor, "conf": confs["extractor"]["conf"]}
    return confs, global_file, failed


def _extract_global(images: Path, names: list[str], files: MapFiles, features: str | Path | None, retrieval: str,
                    retrieval_overrides: Overrides, device: str | None,
                    progress: bool, batch_size: int) -> tuple[dict[str, Any], Path, list[tuple[str, str]]]:
    """Global descriptors only (maps matched by an image matcher); returns the confs, the file, failures."""
    if features is not None and features_h5.read_attrs(files.features).get(EXTRACTOR_ATTR):
        raise InputError(f"{files.features}: holds an extractor's features; an image matcher writes its own "
                         "keypoints there: give another --features path or none")
    rov, summary = _extract_with(retrieval, _overrides(retrieval_overrides), files.global_features, files, images,
                                 names, device, progress, batch_size)
    confs = {"extractor": None, "retrieval": {"name": retrieval, "conf": conf_to_dict(EXTRACTORS.conf(retrieval, rov))}}
    return confs, files.global_features, list(summary.failed)


def _select_pairs(names: list[str], poses: dict | None, files: MapFiles, global_file: Path,
                  num_pairs: int) -> list[tuple[str, str]]:
    """Pairs by pose covisibility when the poses are known, else by retrieval (each image's ``num_pairs`` best)."""
    if poses is not None:
        return pairs_from_poses({n: poses[n] for n in names}, num_pairs)
    index = RetrievalIndex.load(files.index)
    qnames, vectors = global_descriptors(global_file, names)
    found = pairs_from_retrieval(index, qnames, vectors, min(num_pairs, len(names) - 1))
    unique: dict[frozenset[str], tuple[str, str]] = {}
    for pair in found:  # (a, b) and (b, a) are one pair
        unique.setdefault(frozenset(pair), pair)
    return list(unique.values())


def build_map(images: str | Path, out: str | Path, *, poses: str | Path | None = None,
              cameras: str | Path | None = None,
              extractor: str | None = None, extractor_overrides: Overrides = (), matcher: str = DEFAULT_MATCHER,
              matcher_overrides: Overrides = (), retrieval: str = DEFAULT_RETRIEVAL,
              retrieval_overrides: Overrides = (), features: str | Path | None = None,
              matches: str | Path | None = None, num_pairs: int = 10,
              triangulation: TriangulationConf | None = None, sfm: SfMConf | None = None,
              device: str | None = None, progress: bool = True, verbose: bool = False,
              cell_size: float = 2.0, batch_size: int = 1) -> MapSummary:
    """Build a map in ``out`` (layout in the module docstring) from the images below ``images``.

    Args:
        images: database image root; names are paths relative to it.
        out: the map folder (created; a re-run resumes extraction and matching).
        poses: ``name qw qx qy qz tx ty tz`` file (``cam_from_world``); only these images are mapped, and
            they are triangulated with their poses fixed. None: incremental SfM.
        cameras: ``name MODEL W H params...`` file; needed with ``poses``; without it (SfM) each image
            gets ``SIMPLE_RADIAL`` with focal ``1.2 * max(W, H)``, refined by bundle adjustment.
        extractor: registered local extractor; None: the one recorded in ``features``, else vlad-aliked
            (its vocabulary is learned from the database images unless ``vocabulary=`` is given).
        extractor_overrides: its conf overrides (on top of the recorded conf when ``extractor`` is None).
        matcher: registered matcher (LightGlue picks the weights of the features).
        matcher_overrides: its conf overrides.
        retrieval: extractor of global descriptors, used only when the local extractor gives none.
        retrieval_overrides: its conf overrides.
        features: existing (or wanted) local feature file; missing images are added to it.
        matches: existing (or wanted) match file; missing pairs are added to it.
        num_pairs: neighbours matched per image (from poses or retrieval).
        triangulation: thresholds with known poses.
        sfm: settings without poses.
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show progress bars.
        verbose: let COLMAP log.
        cell_size: with an image matcher (``MATCHERS`` kind ``image``, e.g. ``detector-pair``), keypoints of
            an image closer than this many pixels merge into one (``pipelines.match_dense``); its features
            file then holds keypoints only, and ``extractor`` is not used.
        batch_size: database images of equal size per extractor call (``pipelines.extract``; the features
            equal one-by-one extraction's).

    Raises:
        OutputError: ``out`` or one of its parts exists as another kind of file (``pipelines.map_outputs``).
        OutputLockedError: another job is building the map in ``out``.
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
        raise InputError(f"num_pairs: expected an integer >= 1, got {num_pairs!r}")
    dense = MATCHERS.kind_of(matcher) == "image"
    quantize = QuantizeConf(cell_size=cell_size) if dense else None  # before any work: cell_size in range
    images = Path(images)
    files = MapFiles.of(out, features, matches)
    check_map_outputs(files, "--features" if features else "--out", "--matches" if matches else "--out")
    with output_lock(files.root):
        files.root.mkdir(parents=True, exist_ok=True)
        names, pose_map, cams = _inputs(images, poses, cameras)
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        if dense:
            confs, global_file, failed = _extract_global(images, names, files, features, retrieval,
                                                         retrieval_overrides, device, progress, batch_size)
        else:
            confs, global_file, failed = _extract(images, names, files, extractor, extractor_overrides, retrieval,
                                                  retrieval_overrides, device, progress, batch_size)
        names = [n for n in names if n not in dict(failed)]
        build_index(global_file, files.index)
        seconds["extraction"] = time.perf_counter() - start
        start = time.perf_counter()
        pairs = _select_pairs(names, pose_map, files, global_file, num_pairs)
        write_pairs(files.pairs, pairs)
        if quantize is not None:  # an image matcher: per-pair keypoints, merged per image into the feature file
            match_dense(files.pairs, images, files.features, files.matches, matcher=matcher,
                        overrides=matcher_overrides, quantize=quantize, device=device, progress=progress)
            confs["dense"] = {"cell_size": quantize.cell_size, "max_error": quantize.cell_size}
            matched = set(features_h5.list_feature_names(files.features))
            names = [n for n in names if n in matched]  # an image in no matched pair has no keypoints
        else:
            match_features(files.pairs, files.features, files.matches, matcher=matcher,
                           overrides=matcher_overrides, device=device, progress=progress)
        confs["matcher"] = json.loads(features_h5.read_attrs(files.matches)["visloc_matcher"])
        seconds["matching"] = time.perf_counter() - start
        start = time.perf_counter()
        known_intrinsics = all(n in cams for n in names)  # else guessed below (refined by SfM)
        for n in names:
            if n not in cams:
                w, h = (int(v) for v in features_h5.read_features(files.features, n)["image_size"])
                cams[n] = colmap.default_camera(w, h)
        rec, mode, model_conf = _model(images, names, pose_map, cams, files, triangulation, sfm, verbose,
                                       known_intrinsics)
        seconds["model"] = time.perf_counter() - start
        record = {"format": FORMAT, "version": VERSION, "image_root": str(images.resolve()), "mode": mode,
                  **confs, mode: model_conf, "files": _file_record(files), "num_images": len(names),
                  "num_registered": rec.num_reg_images(), "num_points": rec.num_points3D(),
                  "seconds": {k: round(v, 3) for k, v in seconds.items()}}
        atomic_write_text(files.record, json.dumps(record, indent=2) + "\n")
        return MapSummary(files.root, len(names), rec.num_reg_images(), rec.num_points3D(), len(pairs), mode,
                          seconds, failed)


def _model(images: Path, names: list[str], poses: dict | None, cams: dict[str, Camera], files: MapFiles,
           triangulation: TriangulationConf | None, sfm: SfMConf | None, verbose: bool,
           known_intrinsics: bool) -> tuple[Any, str, dict]:
    """Write the database and build the COLMAP model: triangulation with poses, else SfM."""
    pairs = read_pairs(files.pairs)
    if poses is not None:
        conf = triangulation or TriangulationConf()
        reference = colmap.reference_reconstruction(names, poses, cams)
        ids = colmap.write_database(files.database, reference, files.features)
        raw = colmap.read_pair_matches(files.matches, pairs, ids)
        colmap.write_matches(files.database, raw, verify_with_poses(reference, files.features, raw, conf))
        rec = triangulate(reference, files.database, images, files.model, conf, verbose)
        return rec, "triangulation", conf_to_dict(conf)
    sconf = sfm or SfMConf()
    unposed = colmap.unposed_reconstruction(names, cams, known_intrinsics)
    ids = colmap.write_database(files.database, unposed, files.features)
    colmap.write_matches(files.database, colmap.read_pair_matches(files.matches, pairs, ids))
    rec = reconstruct(files.database, pairs, images, files.model, sconf, verbose, known_intrinsics)
    return rec, "sfm", conf_to_dict(sconf)


def _file_record(files: MapFiles) -> dict[str, str]:
    """File names relative to the map folder when inside it (so the folder can move), else absolute."""
    out = {}
    for f in dataclasses.fields(files):
        if f.name in ("root", "record"):
            continue
        path = getattr(files, f.name)
        try:
            out[f.name] = str(path.resolve().relative_to(files.root.resolve()))
        except ValueError:
            out[f.name] = str(path.resolve())
    return out
