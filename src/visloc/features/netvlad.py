"""``netvlad``: the VGG16 + NetVLAD + whitening global descriptor, from the user's official weights.

The network is ``models.netvlad_vgg.NetVLADVGG16``, loaded from a file the user gives (visloc ships
and downloads none) by the loaders of ``weights.converters.netvlad``:

- the authors' MatConvNet model in struct form (``vd16_pitts30k_conv5_3_vlad_preL2_intra_white_struct.mat``,
  as hloc uses it): ``.mat`` files;
- a pytorch-NetVlad checkpoint (``checkpoint.pth.tar``, optionally with Patch-NetVLAD's WPCA): any
  other suffix.

Preprocessing is the loader's, stored in the model: 0-255 minus the ``averageImage`` for the
MatConvNet model, ImageNet mean and std of [0, 1] images for pytorch-NetVlad. Images are RGB; the
output is one L2-normalised ``[G]`` descriptor per image (``Features.global_only``), any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from visloc import conf_ranges as ranges
from visloc.features.base import EXTRACTORS, Extractor, input_size
from visloc.models.netvlad_vgg import NetVLADVGG16
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Features
from visloc.weights.load import WeightsError

__all__ = ["NetVLADConf", "NetVLADExtractor", "load_netvlad"]


@dataclass(frozen=True)
class NetVLADConf:
    """Weights and input size of the ``netvlad`` extractor.

    Attributes:
        weights: the official weights file (required): a ``.mat`` struct or a pytorch-NetVlad checkpoint.
        format: ``auto`` (``.mat`` -> ``matconvnet``, else ``pytorch``), ``matconvnet`` or ``pytorch``.
        resize_max: longest edge before extraction (None: keep the size); 1024 as hloc's NetVLAD.
        resize_to: ``(W, H)``: exact size, overrides ``resize_max``.
    """

    weights: str | None = None
    format: Literal["auto", "matconvnet", "pytorch"] = "auto"
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        ranges.image_size(self)


def load_netvlad(conf: NetVLADConf) -> NetVLADVGG16:
    """The network of ``conf.weights`` in eval mode; no weights: ``WeightsError`` naming the field."""
    from visloc.weights.converters.netvlad import load_matconvnet_netvlad, load_pytorch_netvlad

    if conf.weights is None:
        raise WeightsError("netvlad: weights is required (visloc ships no NetVLAD weights): pass "
                           "--set weights=FILE, the official *_struct.mat or a pytorch-NetVlad checkpoint")
    fmt = conf.format
    if fmt == "auto":
        fmt = "matconvnet" if Path(conf.weights).suffix.lower() == ".mat" else "pytorch"
    loader = load_matconvnet_netvlad if fmt == "matconvnet" else load_pytorch_netvlad
    return loader(conf.weights).eval()


class NetVLADExtractor(Extractor):
    """VGG16-NetVLAD ``global_descriptor [G]`` per image (no local features), RGB input, any batch size."""

    input_spec = IMAGE_RGB

    def __init__(self, conf: NetVLADConf) -> None:
        super().__init__(conf)
        self.net = load_netvlad(conf)
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """0: no local descriptors."""
        return 0

    @property
    def global_dim(self) -> int:
        """G: the whitening size, or ``K * 512`` without whitening."""
        return self.net.out_dim

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """``image [B, C, H, W]`` -> one global-only ``Features`` per image (see ``features.base``)."""
        image = self.check_image(image)
        g = self.net(image)
        size = input_size(image)
        return [Features.global_only(g[b].float(), size) for b in range(image.shape[0])]


def _capabilities(conf: NetVLADConf) -> Capabilities:
    """A global descriptor; without ``weights`` the part cannot run (``needs``)."""
    if conf.weights is None:
        return Capabilities(frozenset({"global"}), needs=frozenset({"weights"}))
    return Capabilities(frozenset({"global"}), weights=(conf.weights,))


EXTRACTORS.register("netvlad", NetVLADConf(), NetVLADExtractor, capabilities=_capabilities)
