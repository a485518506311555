"""``vlad-aliked`` features with the vocabulary learned on the way: ALIKED runs once per image.

``vlad-aliked`` needs a VLAD vocabulary before it can run, and the vocabulary is learned from ALIKED-n16
descriptors of the same images. Done naively (``visloc vocab``, then ``visloc extract``) every image the
vocabulary uses goes through ALIKED twice. Here the local features are extracted once, by ``aliked-n16``
with ``vlad-aliked``'s detection and resize fields (so they are ``vlad-aliked``'s local features, value for
value), into a staging file beside ``out``; the vocabulary is learned from their descriptors (the same
evenly spaced images and k-means as ``pipelines.vocab.build_vocabulary``); each image's VLAD is computed
from its stored descriptors, and the features are staged into ``out`` under ``vlad-aliked``'s record with
the vocabulary set. The staging file is removed once ``out`` is committed; a re-run resumes from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visloc.conf import conf_to_dict
from visloc.features import EXTRACTORS
from visloc.io import features_h5, shards
from visloc.io.jobs import JobSummary
from visloc.io.locks import output_lock
from visloc.pipelines.extract import commit, extract_features, plan_extraction
from visloc.pipelines.vocab import vocabulary_from_features
from visloc.retrieval.vlad import load_vocabulary, vlad

NAME = "vlad-aliked"
#: the fields of ``VLADALIKEDConf`` that make its local features (ALIKED-n16's conf fields of the same name)
LOCAL_FIELDS = ("max_num_keypoints", "detection_threshold", "resize_max", "resize_to")


def staging_file(out: Path) -> Path:
    """Where the ALIKED-n16 features of ``out`` wait for their VLAD (``features.h5`` -> ``features.aliked.h5``)."""
    return out.with_name(f"{out.stem}.aliked{out.suffix}")


def extract_vlad_features(image_dir: str | Path, out: str | Path, vocabulary: str | Path, *,
                          overrides: Mapping[str, Any], image_list: Sequence[str], vocab_images: int,
                          device: str | None = None, progress: bool = True,
                          batch_size: int = 1) -> tuple[dict[str, Any], JobSummary]:
    """``vlad-aliked`` features of ``image_list`` in ``out``; learns ``vocabulary`` first unless it exists.

    Args:
        image_dir: image root.
        out: the ``vlad-aliked`` feature file (created or extended).
        vocabulary: the vocabulary file, learned from the first extraction's descriptors when missing.
        overrides: ``vlad-aliked`` conf overrides without ``vocabulary``.
        image_list: names relative to ``image_dir``.
        vocab_images: a vocabulary learned here uses at most this many images (evenly spaced).
        device: ``cpu``, ``cuda`` or None for automatic.
        progress: show progress bars.
        batch_size: images of equal size per ALIKED call (``pipelines.extract``).

    Returns:
        The overrides with ``vocabulary`` set (the conf ``out`` records) and the extraction's summary.
    """
    image_dir, out, vocabulary = Path(image_dir), Path(out), Path(vocabulary)
    conf = EXTRACTORS.conf(NAME, overrides)
    local = staging_file(out)
    todo = [n for n in image_list if n not in features_h5.done_names(out)]
    local_ov = {k: v for k, v in conf_to_dict(conf).items() if k in LOCAL_FIELDS}
    summary = extract_features(image_dir, local, extractor="aliked-n16", overrides=local_ov, image_list=todo,
                               device=device, progress=progress, batch_size=batch_size) if todo else JobSummary(out)
    failed = dict(summary.failed)
    ok = [n for n in todo if n not in failed]
    if not vocabulary.exists():
        vocabulary_from_features(local, ok, vocabulary, num_clusters=conf.num_clusters, max_images=vocab_images,
                                 extractor_conf=conf_to_dict(EXTRACTORS.conf("aliked-n16", local_ov)))
    final = {**dict(overrides), "vocabulary": str(vocabulary.resolve())}
    _write_vlad(image_dir, out, local, final, ok)
    shards.remove(local)  # everything it held is in ``out`` now
    return final, JobSummary(out, summary.done, len(image_list) - len(todo), list(summary.failed))


def _write_vlad(image_dir: Path, out: Path, local: Path, overrides: Mapping[str, Any], names: list[str]) -> None:
    """Stage each image's local features of ``local`` with their VLAD into ``out``, and commit."""
    with output_lock(out):
        plan = plan_extraction(image_dir, out, extractor=NAME, overrides=overrides, image_list=names)
        if not plan.todo:
            return
        conf = plan.conf
        centroids = load_vocabulary(conf.vocabulary, conf.num_clusters, 128).centroids
        try:
            for name in plan.todo:
                feats = features_h5.read_features(local, name)
                g = vlad(feats["descriptors"], centroids, power_norm=conf.power_norm)
                features_h5.stage_features(out, name, {**feats, "global_descriptor": np.asarray(g, np.float32)})
        finally:
            commit(plan)
