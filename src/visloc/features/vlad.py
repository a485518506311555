"""``vlad-aliked``: ALIKED-n16 local features plus their VLAD as a global descriptor.

The vocabulary is a file the user makes from their own images (``visloc vocab``); visloc ships
none. Without one the extractor still builds (so that it can be listed and configured), and
``forward`` raises a ``VocabularyError`` saying how to make one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visloc import conf_ranges as ranges
from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.learned import ALIKED, ALIKEDConf
from visloc.registry import Capabilities
from visloc.retrieval.vlad import VocabularyError, load_vocabulary, vlad
from visloc.types import IMAGE_RGB, Features
from visloc.weights.records import resolve_weights


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
        ranges.at_least(self, 1, "num_clusters")
        ranges.image_size(self)


class VLADALIKED(Extractor):
    """ALIKED-n16 keypoints and 128-d descriptors, plus ``global_descriptor [1, K * 128]``."""

    input_spec = IMAGE_RGB
    min_side = 16  # ALIKED's
    centroids: torch.Tensor  # buffer [K, 128] (registered in __init__; [0, 128] without a vocabulary)

    def __init__(self, conf: VLADALIKEDConf) -> None:
        super().__init__(conf)
        self.aliked = ALIKED(ALIKEDConf(model_name="aliked-n16", max_num_keypoints=conf.max_num_keypoints,
                                        detection_threshold=conf.detection_threshold))
        centroids = torch.zeros(0, self.descriptor_dim)
        if conf.vocabulary is not None:
            vocab = load_vocabulary(conf.vocabulary, conf.num_clusters, self.descriptor_dim)
            centroids = torch.from_numpy(vocab.centroids)
        self.register_buffer("centroids", centroids)
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """128 (local); the global descriptor has ``num_clusters * 128``."""
        return 128

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect, describe, aggregate a batch; see the contract of ``features.base``."""
        image = self.check_image(image)
        if self.conf.vocabulary is None:
            raise VocabularyError("vlad-aliked: no vocabulary; make one with 'visloc vocab IMAGES --out vocab.pt' "
                                  "and pass --set vocabulary=vocab.pt")
        out = []
        for f in self.aliked(image):
            g = vlad(f.descriptors.cpu().numpy(), self.centroids.cpu().numpy(), power_norm=self.conf.power_norm)
            out.append(f.with_global(torch.from_numpy(g).to(image.device)))
        return out


def _capabilities(conf: VLADALIKEDConf) -> Capabilities:
    needs = frozenset({"vocabulary"}) if conf.vocabulary is None else frozenset()
    files = (str(resolve_weights("aliked-n16")),) + ((conf.vocabulary,) if conf.vocabulary else ())
    return Capabilities(frozenset({"local", "global"}), "aliked-128", needs=needs, weights=files)


EXTRACTORS.register("vlad-aliked", VLADALIKEDConf(), VLADALIKED, capabilities=_capabilities)
