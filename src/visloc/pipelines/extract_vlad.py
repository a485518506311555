"""VLAD features (``vlad-aliked``, ``vlad-xfeat``) with the vocabulary learned on the way: one local pass per image.

A VLAD extractor (``features.vlad``) needs a vocabulary before it can run, and the vocabulary is learned from
its local extractor's descriptors of the same images (ALIKED-n16 for ``vlad-aliked``, XFeat for
``vlad-xfeat``). Done naively (``visloc vocab``, then ``visloc extract``) every image the vocabulary uses goes
through the local network twice. Here the local features are extracted once, by the local extractor with the
VLAD extractor's detection and resize fields (so they are its local features, value for value), into a
staging file beside ``out``; the vocabulary is learned from their descriptors (the same evenly spaced images
and k-means as ``pipelines.vocab.build_vocabulary``); each image's VLAD is computed from its stored
descriptors, and the features are staged into ``out`` under the VLAD extractor's record with the vocabulary
set. The staging file is removed once ``out`` is committed; a re-run resumes from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visloc.conf import conf_to_dict
from visloc.features import EXTRACTORS
from visloc.features.vlad import ALIKED_SPEC, VLADSpec, local_overrides, vlad_spec
from visloc.io import features_h5, shards
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.pipelines.extract import commit, extract_features, plan_extraction
from visloc.pipelines.vocab import vocabulary_from_features
from visloc.retrieval.vlad import load_vocabulary, vlad


def staging_file(out: Path, spec: VLADSpec = ALIKED_SPEC) -> Path:
    """Where the local features of ``out`` wait for their VLAD (``features.h5`` -> ``features.aliked.h5``)."""
    return out.with_name(f"{out.stem}.{spec.stage}{out.suffix}")


def extract_vlad_features(image_dir: str | Path, out: str | Path, vocabulary: str | Path, *,
                          overrides: Mapping[str, Any], image_list: Sequence[str], vocab_images: int,
                          device: str | None = None, progress: bool = True,
                          batch_size: int = 1, extractor: str = ALIKED_SPEC.name) -> tuple[dict[str, Any], JobSummary]:
    """``extractor``'s features of ``image_list`` in ``out``; learns ``vocabulary`` first unless it exists.

    Args:
        image_dir: image root.
        out: the VLAD extractor's feature file (created or extended).
        vocabulary: the vocabulary file, learned from the first extraction's descriptors when missing.
        overrides: the VLAD extractor's conf overrides without ``vocabulary``.
        image_list: names relative to ``image_dir``.
        vocab_images: a vocabulary learned here uses at most this many images (evenly spaced).
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show progress bars.
        batch_size: images of equal size per local extractor call (``pipelines.extract``).
        extractor: the VLAD extractor (``features.vlad.SPECS``: ``vlad-aliked``, ``vlad-xfeat``).

    Returns:
        The overrides with ``vocabulary`` set (the conf ``out`` records) and the extraction's summary.
    """
    image_dir, out, vocabulary = Path(image_dir), Path(out), Path(vocabulary)
    spec = vlad_spec(extractor)
    conf = EXTRACTORS.conf(spec.name, overrides)
    local = staging_file(out, spec)
    todo = [n for n in image_list if n not in features_h5.done_names(out)]
    local_ov = local_overrides(spec, conf)
    summary = extract_features(image_dir, local, extractor=spec.local, overrides=local_ov, image_list=todo,
                               device=device, progress=progress, batch_size=batch_size) if todo else JobSummary(out)
    failed = dict(summary.failed)
    ok = [n for n in todo if n not in failed]
    if not vocabulary.exists():
        vocabulary_from_features(local, ok, vocabulary, num_clusters=conf.num_clusters, max_images=vocab_images,
                                 extractor_conf=conf_to_dict(EXTRACTORS.conf(spec.local, local_ov)), local=spec.local)
    final = {**dict(overrides), "vocabulary": str(vocabulary.resolve())}
    _write_vlad(image_dir, out, local, final, ok, spec)
    shards.remove(local)  # everything it held is in ``out`` now
    return final, JobSummary(out, summary.done, len(image_list) - len(todo), list(summary.failed))


def _write_vlad(image_dir: Path, out: Path, local: Path, overrides: Mapping[str, Any], names: list[str],
                spec: VLADSpec) -> None:
    """Stage each image's local features of ``local`` with their VLAD into ``out``, and commit."""
    with output_lock(out):
        plan = plan_extraction(image_dir, out, extractor=spec.name, overrides=overrides, image_list=names)
        if not plan.todo:
            return
        conf = plan.conf
        centroids = load_vocabulary(conf.vocabulary, conf.num_clusters, spec.dim).centroids
        try:
            for name in plan.todo:
                feats = features_h5.read_features(local, name)
                g = vlad(feats["descriptors"], centroids, power_norm=conf.power_norm)
                features_h5.stage_features(out, name, {**feats, "global_descriptor": np.asarray(g, np.float32)})
        finally:
            commit(plan)
