"""VLAD extractors: a local extractor's features plus their VLAD as a global descriptor.

``vlad-aliked`` wraps ALIKED-n16 (128-d), ``vlad-xfeat`` XFeat (64-d): one wrapper (``VLADExtractor``) over
the registered local extractor named by its :class:`VLADSpec`. The local features are the local
extractor's, value for value, with the same conf fields (:attr:`VLADSpec.local_fields`).

The vocabulary is a file the user makes from their own images (``visloc vocab``, or ``visloc map build``,
which learns it from the map's own descriptors: ``pipelines.extract_vlad``); visloc ships none. Without one
the extractor still builds (so that it can be listed and configured), and ``forward`` raises a
``VocabularyError`` saying how to make one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from visloc import conf_ranges as ranges
from visloc.errors import InputError
from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.xfeat import FAMILY as XFEAT_FAMILY
from visloc.features.xfeat import XFeatConf
from visloc.models.xfeat import DIVISOR as XFEAT_DIVISOR
from visloc.registry import Capabilities
from visloc.retrieval.vlad import VocabularyError, load_vocabulary, vlad
from visloc.types import IMAGE_RGB, Features
from visloc.weights.records import resolve_weights


@dataclass(frozen=True)
class VLADSpec:
    """What a VLAD extractor wraps.

    Attributes:
        name: the VLAD extractor's registered name.
        local: the registered local extractor whose descriptors are aggregated.
        local_fields: the VLAD conf's fields that are the local extractor's conf fields of the same name.
        dim: the local descriptors' dimension (the vocabulary's).
        family: the local descriptors' family (the matchers' weights follow it).
        weights: ``resolve_weights`` name of the local network.
        stage: infix of the staging file of ``pipelines.extract_vlad`` (``features.<stage>.h5``).
    """

    name: str
    local: str
    local_fields: tuple[str, ...]
    dim: int
    family: str
    weights: str
    stage: str

    def vocab_command(self) -> str:
        """The ``visloc vocab`` call that makes a vocabulary for this extractor."""
        default = self.name == ALIKED_SPEC.name
        return "visloc vocab IMAGES --out vocab.pt" + ("" if default else f" --extractor {self.name}")


ALIKED_SPEC = VLADSpec("vlad-aliked", "aliked-n16", ("max_num_keypoints", "detection_threshold", "resize_max",
                                                   "resize_to"), 128, "aliked-128", "aliked-n16", "aliked")
XFEAT_SPEC = VLADSpec("vlad-xfeat", "xfeat", tuple(f.name for f in fields(XFeatConf)), 64, XFEAT_FAMILY, "xfeat",
                      "xfeat")
#: every VLAD extractor's spec by its registered name
SPECS: dict[str, VLADSpec] = {s.name: s for s in (ALIKED_SPEC, XFEAT_SPEC)}


def vlad_spec(name: str) -> VLADSpec:
    """The spec of the VLAD extractor ``name``; another name raises ``InputError``."""
    if name not in SPECS:
        raise InputError(f"{name}: not a VLAD extractor (known: {', '.join(SPECS)})")
    return SPECS[name]


def local_overrides(spec: VLADSpec, conf: Any) -> dict[str, Any]:
    """The local extractor's conf fields of a VLAD conf (its local features are the local extractor's)."""
    return {k: getattr(conf, k) for k in spec.local_fields}


def _check_vlad_fields(conf: Any) -> None:
    ranges.at_least(conf, 1, "num_clusters")


@dataclass(frozen=True)
class VLADALIKEDConf:
    """ALIKED-n16 detection fields, and the VLAD vocabulary (path from ``visloc vocab``)."""

    max_num_keypoints: int = 2048
    detection_threshold: float = 0.2
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max
    vocabulary: str | None = None
    num_clusters: int = 64  # checked against the vocabulary file
    power_norm: bool = True  # signed square root after intra-normalisation

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self)
        ranges.between(self, -1, 1, "detection_threshold")
        _check_vlad_fields(self)
        ranges.image_size(self)


@dataclass(frozen=True)
class VLADXFeatConf(XFeatConf):
    """XFeat's fields (inherited from ``features.xfeat.XFeatConf``), and the VLAD vocabulary of its 64-d descriptors."""

    vocabulary: str | None = None
    num_clusters: int = 64  # checked against the vocabulary file
    power_norm: bool = True  # signed square root after intra-normalisation

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_vlad_fields(self)


class VLADExtractor(Extractor):
    """The local extractor of ``spec``'s features, plus ``global_descriptor [1, K * D]``: their VLAD."""

    spec: ClassVar[VLADSpec]
    input_spec = IMAGE_RGB
    centroids: torch.Tensor  # buffer [K, D] (registered in __init__; [0, D] without a vocabulary)

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.local = EXTRACTORS.build(self.spec.local, local_overrides(self.spec, conf))
        centroids = torch.zeros(0, self.descriptor_dim)
        if conf.vocabulary is not None:
            vocab = load_vocabulary(conf.vocabulary, conf.num_clusters, self.descriptor_dim)
            centroids = torch.from_numpy(vocab.centroids)
        self.register_buffer("centroids", centroids)
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """The local descriptors' ``D``; the global descriptor has ``num_clusters * D``."""
        return self.spec.dim

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect, describe, aggregate a batch; see the contract of ``features.base``."""
        image = self.check_image(image)
        if self.conf.vocabulary is None:
            raise VocabularyError(f"{self.spec.name}: no vocabulary; make one with '{self.spec.vocab_command()}' "
                                  "and pass --set vocabulary=vocab.pt")
        out = []
        centroids = self.centroids.cpu().numpy()
        for f in self.local(image):
            g = vlad(f.descriptors.cpu().numpy(), centroids, power_norm=self.conf.power_norm)
            out.append(f.with_global(torch.from_numpy(g).to(image.device)))
        return out


class VLADALIKED(VLADExtractor):
    """ALIKED-n16 keypoints and 128-d descriptors, plus their VLAD."""

    spec = ALIKED_SPEC
    min_side = 16  # ALIKED's


class VLADXFeat(VLADExtractor):
    """XFeat keypoints and 64-d descriptors, plus their VLAD."""

    spec = XFEAT_SPEC
    min_side = XFEAT_DIVISOR  # XFeat's


def _capabilities_of(spec: VLADSpec) -> Callable[[Any], Capabilities]:
    """The registry's capabilities callback of ``spec``'s extractor."""
    def capabilities(conf: Any) -> Capabilities:
        needs = frozenset({"vocabulary"}) if conf.vocabulary is None else frozenset()
        local_weights = getattr(conf, "weights", None)
        files = (str(resolve_weights(spec.weights, local_weights)),) + ((conf.vocabulary,) if conf.vocabulary else ())
        return Capabilities(frozenset({"local", "global"}), spec.family, needs=needs, weights=files)

    return capabilities


EXTRACTORS.register("vlad-aliked", VLADALIKEDConf(), VLADALIKED, capabilities=_capabilities_of(ALIKED_SPEC))
EXTRACTORS.register("vlad-xfeat", VLADXFeatConf(), VLADXFeat, capabilities=_capabilities_of(XFEAT_SPEC))
