"""``hfnet-onnx``: the ``hfnet`` extractor with the network run by onnxruntime.

The ONNX graph is ``HFNet.forward`` (``image [B, 1, H, W]`` -> ``logits``, ``dense_descriptors``,
``global_descriptor``; dynamic batch, height and width, H and W multiples of 8). Padding, NMS, top-k
and descriptor sampling run outside the graph, with the same code as ``hfnet``
(``features.hfnet.hfnet_postprocess``), so both extractors give the same keypoints.

Without an ``onnx`` file the extractor exports its network in memory at build time (``weights`` or
the shipped default, as ``hfnet``), which takes a few seconds; ``visloc export hfnet`` writes a file.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visloc import conf_ranges as ranges
from visloc.export import OnnxModelError, export_onnx
from visloc.export import onnx_session as _generic_session
from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.hfnet import HFNetExtractorConf, hfnet_capabilities, hfnet_postprocess, pad_to_cell
from visloc.models.hfnet import ONNX_CONF_KEY, ONNX_INPUT, ONNX_OUTPUTS, HFNet
from visloc.types import IMAGE_GRAY, Features
from visloc.weights.hfnet import resolve_hfnet
from visloc.weights.load import WeightsError

logger = logging.getLogger(__name__)
INPUT_NAME = ONNX_INPUT
OUTPUT_NAMES = ONNX_OUTPUTS
#: ONNX metadata key holding the network's ``HFNetConf`` as JSON
CONF_KEY = ONNX_CONF_KEY


def hfnet_to_onnx(model: HFNet, opset: int = 17) -> bytes:
    """Export ``model`` (eval mode, CPU) to ONNX bytes with dynamic batch, height and width.

    The generic ``visloc.export.export_onnx`` of ``model.export_spec()``; the serialized model
    carries its ``HFNetConf`` as JSON in the metadata key ``CONF_KEY``.
    """
    return export_onnx(model, dataclasses.replace(model.export_spec(), opset=opset))


def onnx_session(model: bytes | str | Path, num_threads: int = 0):  # noqa: ANN201  (onnxruntime is optional)
    """``visloc.export.onnx_session`` for HF-Net models; a missing or bad file is a ``WeightsError``."""
    try:
        return _generic_session(model, num_threads, what="HF-Net ONNX model")
    except OnnxModelError as e:
        raise WeightsError(str(e)) from None


@dataclass(frozen=True)
class HFNetOnnxConf(HFNetExtractorConf):
    """``hfnet``'s fields, plus the ONNX file (None: exported in memory from ``weights``) and threads."""

    onnx: str | None = None
    num_threads: int = 0  # 0: torch.get_num_threads()

    def __post_init__(self) -> None:
        super().__post_init__()
        ranges.threads(self)


class HFNetOnnxExtractor(Extractor):
    """``hfnet`` with onnxruntime running the network; same outputs, gray input."""

    input_spec = IMAGE_GRAY

    def __init__(self, conf: HFNetOnnxConf) -> None:
        super().__init__(conf)
        if conf.onnx is not None:
            self.session = onnx_session(conf.onnx, conf.num_threads)
        else:
            self.session = onnx_session(hfnet_to_onnx(resolve_hfnet(conf.weights, conf.allow_random)),
                                        conf.num_threads)
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if [i.name for i in self.session.get_inputs()] != [INPUT_NAME] or set(outputs) != set(OUTPUT_NAMES):
            raise WeightsError(f"{conf.onnx}: not an HF-Net ONNX model (inputs {INPUT_NAME!r}, outputs {OUTPUT_NAMES})")
        self._descriptor_dim = int(outputs["dense_descriptors"][1])
        self._global_dim = int(outputs["global_descriptor"][1])

    @property
    def descriptor_dim(self) -> int:
        """D of the local descriptors (read from the ONNX graph)."""
        return self._descriptor_dim

    @property
    def global_dim(self) -> int:
        """G of the global descriptor (read from the ONNX graph)."""
        return self._global_dim

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect, describe and aggregate ``image [B, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        padded = pad_to_cell(image).detach().cpu().float().numpy()
        outs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(padded)})
        pred = {k: torch.from_numpy(v) for k, v in zip(OUTPUT_NAMES, outs, strict=True)}
        return hfnet_postprocess(pred, (image.shape[-2], image.shape[-1]), self.conf)


EXTRACTORS.register("hfnet-onnx", HFNetOnnxConf(), HFNetOnnxExtractor, capabilities=hfnet_capabilities)
