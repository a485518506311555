"""Match two image files, estimate a two-view model, and optionally draw the result."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.geometry.estimators import ESTIMATORS, Estimate
from visloc.io.images import read_image
from visloc.io.locks import output_lock
from visloc.io.outputs import check_picture_output
from visloc.matching import MATCHERS
from visloc.matching.select import descriptor_family, matcher_conf
from visloc.pipelines.common import pick_device
from visloc.viz.matches import draw_matches, save_image


@dataclass(frozen=True)
class PairMatch:
    """Features of both images, their matches and the estimated model."""

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray  # [M, 2]
    scores: np.ndarray  # [M]
    estimate: Estimate


def match_images(path0: str | Path, path1: str | Path, *, extractor: str = "aliked-n16", matcher: str = "lightglue",
                 model: str = "homography", extractor_overrides: Sequence[str] = (),
                 matcher_overrides: Sequence[str] = (), estimator_overrides: Sequence[str] = (),
                 K0: np.ndarray | None = None, K1: np.ndarray | None = None, out: str | Path | None = None,
                 device: str | None = None) -> PairMatch:
    """Match two images (extract + feature matcher, or an image matcher), estimate ``model``; draw to ``out``.

    With an image matcher (``MATCHERS`` kind ``image``) ``extractor`` is not used.

    Raises:
        OutputError: ``out`` is one of the images, or exists and is not a picture.
        OutputLockedError: another job is writing ``out``.
    """
    with contextlib.ExitStack() as stack:
        if out is not None:  # before any work: the picture may not replace an input or another kind of file
            check_picture_output(out, (path0, path1))
            stack.enter_context(output_lock(out))
        return _match(Path(path0), Path(path1), extractor, matcher, model, extractor_overrides, matcher_overrides,
                      estimator_overrides, K0, K1, out, device)


def _match(path0: Path, path1: Path, extractor: str, matcher: str, model: str, extractor_overrides: Sequence[str],
           matcher_overrides: Sequence[str], estimator_overrides: Sequence[str], K0: np.ndarray | None,
           K1: np.ndarray | None, out: str | Path | None, device: str | None) -> PairMatch:
    dev = pick_device(device)
    est = ESTIMATORS.build(model, estimator_overrides)
    img0, img1 = read_image(path0), read_image(path1)
    if MATCHERS.kind_of(matcher) == "image":
        from visloc.matching.api import match_images as run_image_matcher

        pred = run_image_matcher(MATCHERS.build(matcher, matcher_overrides).to(dev), img0, img1, device=dev)
        kp0, kp1 = pred.keypoints0, pred.keypoints1
        label = matcher
    else:
        econf = EXTRACTORS.conf(extractor, extractor_overrides)
        ex = EXTRACTORS.build_conf(extractor, econf).to(dev)
        ma = MATCHERS.build_conf(matcher, matcher_conf(matcher, matcher_overrides,
                                                       descriptor_family(extractor, econf))).to(dev)
        f0, f1 = extract_image(ex, img0, device=dev), extract_image(ex, img1, device=dev)
        pred = ma(f0.to(dev), f1.to(dev))
        kp0, kp1 = f0.keypoints, f1.keypoints
        label = f"{extractor}+{matcher}"
    if kp0 is None or kp1 is None:
        raise RuntimeError(f"{matcher}: an image matcher returned no keypoints")
    m, scores = pred.numpy()
    kpts0, kpts1 = kp0.cpu().numpy(), kp1.cpu().numpy()
    k0, k1 = kpts0[m[:, 0]], kpts1[m[:, 1]]
    estimate = est(k0, k1, K0, K1)
    if out is not None:
        caption = f"{label}: {estimate.num_inliers}/{len(m)} {model} inliers"
        save_image(out, draw_matches(img0, img1, k0, k1, estimate.inliers, caption))
    return PairMatch(kpts0, kpts1, m, scores, estimate)
