"""``hfnet-global``: only HF-Net's global descriptor (NetVLAD on the MobileNetV2 backbone), batched.

The same network as the ``hfnet`` extractor (the shipped default student via
``weights.hfnet.resolve_hfnet``, or ``weights=``), run without its detector and local
descriptor heads: the backbone and the global branch only, so retrieval pays for what it uses. The
gray image batch is padded at the bottom and right to multiples of 8 (``features.hfnet.pad_to_cell``,
edge replication), exactly as ``hfnet`` pads, so the descriptor equals ``hfnet``'s global descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visloc import conf_ranges as ranges
from visloc.features.base import EXTRACTORS, Extractor, input_size
from visloc.features.hfnet import pad_to_cell
from visloc.models.backbones import fuse_batchnorm
from visloc.models.hfnet import HFNet
from visloc.registry import Capabilities
from visloc.types import IMAGE_GRAY, Features
from visloc.weights.hfnet import DEFAULT_WEIGHTS, resolve_hfnet

__all__ = ["HFNetGlobal", "HFNetGlobalConf"]


@dataclass(frozen=True)
class HFNetGlobalConf:
    """Weights and input size of the ``hfnet-global`` extractor.

    Attributes:
        weights: a visloc HF-Net checkpoint (``save_hfnet``); None: the shipped default student.
        allow_random: without weights, build a random network instead of raising (speed tests).
        resize_max: longest edge before extraction (None: keep the size).
        resize_to: ``(W, H)``: exact size, overrides ``resize_max``.
    """

    weights: str | None = None
    allow_random: bool = False
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        ranges.image_size(self)


class HFNetGlobal(Extractor):
    """HF-Net's ``global_descriptor [G]`` per image (no local features), gray input, any batch size."""

    input_spec = IMAGE_GRAY

    def __init__(self, conf: HFNetGlobalConf) -> None:
        super().__init__(conf)
        net = resolve_hfnet(conf.weights, conf.allow_random).eval()
        fuse_batchnorm(net)  # in place (it returns the same module, typed nn.Module)
        self.net: HFNet = net.to(memory_format=torch.channels_last)
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """0: no local descriptors."""
        return 0

    @property
    def global_dim(self) -> int:
        """G of the global descriptor."""
        return self.net.conf.global_dim

    def _global(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` (multiples of 8) -> ``[B, G]`` L2-normalised: ``HFNet.forward``'s global branch."""
        net = self.net
        mean_std = net.get_buffer("mean_std")
        x = (image - mean_std[0]) / mean_std[1]
        for block in net.backbone:
            x = block(x)
        g = net.reduction(net.netvlad(net.projection(x)))
        return F.normalize(g, p=2.0, dim=1)

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """``image [B, C, H, W]`` -> one global-only ``Features`` per image (see ``features.base``)."""
        image = self.check_image(image)
        g = self._global(pad_to_cell(image).contiguous(memory_format=torch.channels_last))
        size = input_size(image)
        return [Features.global_only(g[b].float(), size) for b in range(image.shape[0])]


def _capabilities(conf: HFNetGlobalConf) -> Capabilities:
    """A global descriptor; its weights are the checkpoint (or the shipped default student)."""
    files = [conf.weights] if conf.weights else [str(DEFAULT_WEIGHTS)] if DEFAULT_WEIGHTS.is_file() else []
    return Capabilities(frozenset({"global"}), weights=tuple(files))


EXTRACTORS.register("hfnet-global", HFNetGlobalConf(), HFNetGlobal, capabilities=_capabilities)
