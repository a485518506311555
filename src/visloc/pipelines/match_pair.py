"""Match two image files, estimate a two-view model, and optionally draw the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visloc.features import EXTRACTORS
from visloc.features.api import extract_array
from visloc.geometry.estimators import ESTIMATORS, Estimate
from visloc.io.images import read_image
from visloc.matching import MATCHERS
from visloc.pipelines.common import pick_device
from visloc.pipelines.match_features import infer_matcher_overrides
from visloc.viz.matches import draw_matches, save_image


@dataclass(frozen=True)
class PairMatch:
    """Features of both images, their matches and the estimated model."""

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray  # [M, 2]
    scores: np.ndarray  # [M]
    estimate: Estimate


def match_images(path0: str | Path, path1: str | Path, extractor: str = "aliked-n16", matcher: str = "lightglue",
                 model: str = "homography", extractor_overrides: Sequence[str] = (),
                 matcher_overrides: Sequence[str] = (), estimator_overrides: Sequence[str] = (),
                 K0: np.ndarray | None = None, K1: np.ndarray | None = None, out: str | Path | None = None,
                 device: str | None = None) -> PairMatch:
    """Extract, match, estimate ``model``; draw inliers/outliers to ``out`` when given."""
    dev = pick_device(device)
    ex = EXTRACTORS.build(extractor, extractor_overrides).to(dev)
    ma = MATCHERS.build(matcher, infer_matcher_overrides(matcher, matcher_overrides, extractor)).to(dev)
    est = ESTIMATORS.build(model, estimator_overrides)
    img0, img1 = read_image(path0), read_image(path1)
    f0, f1 = extract_array(ex, img0, device=dev), extract_array(ex, img1, device=dev)
    keep = ("keypoints", "descriptors", "scores", "image_size")
    pred = ma({k: torch.from_numpy(f0[k]).to(dev) for k in keep}, {k: torch.from_numpy(f1[k]).to(dev) for k in keep})
    m = pred["matches"].cpu().numpy()
    k0, k1 = f0["keypoints"][m[:, 0]], f1["keypoints"][m[:, 1]]
    estimate = est(k0, k1, K0, K1)
    if out is not None:
        caption = f"{extractor}+{matcher}: {estimate.num_inliers}/{len(m)} {model} inliers"
        save_image(out, draw_matches(img0, img1, k0, k1, estimate.inliers, caption))
    return PairMatch(f0["keypoints"], f1["keypoints"], m, pred["scores"].cpu().numpy(), estimate)
