"""Match the local features of image pairs into an HDF5 match file (hloc layout), resumably."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visloc.errors import VislocError
from visloc.io import features_h5, matches_h5, parts
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.io.outputs import check_h5_output
from visloc.io.pairs import read_pairs
from visloc.matching import MATCHERS
from visloc.matching.select import check_feature_matcher, family_of_record, matcher_conf
from visloc.pipelines.common import conf_record, conflicting_conf, pick_device
from visloc.pipelines.extract import ATTR as EXTRACTOR_ATTR
from visloc.types import Features

logger = logging.getLogger(__name__)
ATTR = "visloc_matcher"


class MatchError(VislocError, ValueError):
    """A matching job that cannot start (conflicting output)."""


def _check_compatible(out: Path, record: str) -> None:
    other = conflicting_conf(out, ATTR, record)
    if other is not None:
        raise MatchError(f"{out}: holds matches of another matcher or conf ({other}); "
                         "use another --out or delete it")


def match_features(pairs: str | Path, features: str | Path, out: str | Path, *, matcher: str = "lightglue",
                   overrides: Mapping[str, Any] | Sequence[str] = (), features1: str | Path | None = None,
                   device: str | None = None, progress: bool = True) -> JobSummary:
    """Match every pair of the ``pairs`` file.

    Args:
        pairs: text file, ``name0 name1`` per line.
        features: feature file of image 0 (and of image 1 unless ``features1`` is given).
        out: HDF5 match file, created or extended; finished pairs are skipped.
        matcher: registered feature matcher; LightGlue picks its weights from the features' descriptor family
            (``matching.select``).
        overrides: matcher conf overrides.
        features1: feature file of the second images (e.g. database features).
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show a progress bar.

    The job holds ``out``'s writer lock (``io.locks``) for its whole life; ``out`` must be a match file
    (or absent) in a writable folder (``io.outputs``), and parts staged by an interrupted run of another
    conf are refused (``io.parts.check_staged``).
    """
    with output_lock(out):
        return _match_features(Path(pairs), Path(features), Path(out), matcher, overrides, features1, device,
                               progress)


def _match_features(pairs: Path, features: Path, out: Path, matcher: str,
                    overrides: Mapping[str, Any] | Sequence[str], features1: str | Path | None, device: str | None,
                    progress: bool) -> JobSummary:
    check_h5_output(out, "matches")
    features1 = Path(features1) if features1 is not None else features
    check_feature_matcher(matcher, "match-features")
    conf = matcher_conf(matcher, overrides, family_of_record(features_h5.read_attrs(features).get(EXTRACTOR_ATTR)))
    record = conf_record(matcher, conf)
    _check_compatible(out, record)  # else finished pairs of another conf would be skipped silently
    parts.check_staged(out, record, "choose another --out")
    pair_list = read_pairs(pairs)
    done = matches_h5.done_pairs(out)
    todo = [p for p in pair_list if matches_h5.names_to_pair(*p) not in done
            and matches_h5.names_to_pair(p[1], p[0]) not in done]
    summary = JobSummary(out, already_done=len(pair_list) - len(todo))
    if not todo:
        return summary
    dev = pick_device(device)
    model = MATCHERS.build_conf(matcher, conf).to(dev)
    cache: dict[tuple[Path, str], Features] = {}
    parts.claim(out, record)

    def load(path: Path, name: str) -> Features:
        if (path, name) not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[(path, name)] = features_h5.load_features(path, name)
        return cache[(path, name)]

    try:
        for name0, name1 in tqdm(todo, desc=f"match {matcher}", disable=not progress, unit="pair"):
            try:
                f0, f1 = load(features, name0), load(features1, name1)
            except features_h5.FeatureStoreError as e:
                summary.failed.append((f"{name0} {name1}", str(e)))
                continue
            pred = model(f0.to(dev), f1.to(dev))
            matches_h5.stage_matches(out, name0, name1, pred.matches0().cpu().numpy(),
                                     pred.matching_scores0().cpu().numpy())
            summary.done += 1
    finally:  # a run that staged nothing (an error at its first pair) creates no file that would block a re-run
        if out.exists() or parts.staged_entries(out):
            matches_h5.commit_matches(out, {ATTR: record})
        else:
            parts.discard_merged(out, [])
    return summary
