"""``detector-pair``: any extractor + feature matcher run as one image matcher.

It makes every sparse method usable wherever an image matcher is expected (``visloc match-dense``,
maps and localization with per-pair keypoints, evaluation), and it is the reference the dense
pipeline is tested against: its per-pair keypoints are the extractor's keypoints of each image, so
quantizing them per image must give back the same matches.

The extractor and the matcher are registry parts built from their names and ``key=value``
overrides; LightGlue's weights follow the extractor's descriptor family (``matching.select``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visloc import conf_ranges as ranges
from visloc.matching.base import MATCHERS, ImageMatcher
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Matches


@dataclass(frozen=True)
class DetectorPairConf:
    """The extractor and the feature matcher, by registered name with ``key=value`` overrides."""

    extractor: str = "aliked-n16"
    extractor_set: tuple[str, ...] = ()
    matcher: str = "lightglue"
    matcher_set: tuple[str, ...] = ()
    resize_max: int | None = 1024

    def __post_init__(self) -> None:
        ranges.image_size(self)


class DetectorPair(ImageMatcher):
    """Extract both images, match their features; keypoints are the extractor's."""

    input_spec = IMAGE_RGB
    max_batch = None

    def __init__(self, conf: DetectorPairConf) -> None:
        super().__init__(conf)
        from visloc.matching.select import check_feature_matcher, descriptor_family, matcher_conf
        from visloc.registry import EXTRACTORS

        check_feature_matcher(conf.matcher, "detector-pair")
        econf = EXTRACTORS.conf(conf.extractor, conf.extractor_set)
        self.extractor = EXTRACTORS.build_conf(conf.extractor, econf)
        mconf = matcher_conf(conf.matcher, conf.matcher_set, descriptor_family(conf.extractor, econf))
        self.matcher = MATCHERS.build_conf(conf.matcher, mconf)

    @torch.inference_mode()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        """Match each pair of the batches; see the contract in ``matching.base``."""
        image0, image1 = self.check_images(image0, image1)
        feats0, feats1 = self.extractor(image0), self.extractor(image1)
        out = []
        for f0, f1 in zip(feats0, feats1, strict=True):
            m = self.matcher(f0, f1)
            out.append(Matches(m.matches, m.scores, m.num0, m.num1, f0.keypoints, f1.keypoints))
        return out


def _capabilities(conf: DetectorPairConf) -> Capabilities:
    """Matches; its weights are the extractor's and the matcher's."""
    from visloc.matching.select import descriptor_family, matcher_conf
    from visloc.registry import EXTRACTORS

    econf = EXTRACTORS.conf(conf.extractor, conf.extractor_set)
    mconf = matcher_conf(conf.matcher, conf.matcher_set, descriptor_family(conf.extractor, econf))
    files = EXTRACTORS.capabilities(conf.extractor, econf).weights + MATCHERS.capabilities(conf.matcher, mconf).weights
    return Capabilities(frozenset({"matches"}), weights=files)


MATCHERS.register("detector-pair", DetectorPairConf(), DetectorPair, capabilities=_capabilities)
