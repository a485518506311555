"""``hfnet-onnx``: the ``hfnet`` extractor with the network run by onnxruntime.

The ONNX graph is ``HFNet.forward`` (``image [B, 1, H, W]`` -> ``logits``, ``dense_descriptors``,
``global_descriptor``; dynamic batch, height and width, H and W multiples of 8). Padding, NMS, top-k
and descriptor sampling run outside the graph, with the same code as ``hfnet``
(``features.hfnet.hfnet_postprocess``), so both extractors give the same keypoints.

Without an ``onnx`` file the extractor exports its network in memory at build time (``weights`` or
the shipped default, as ``hfnet``), which takes a few seconds; ``visloc export hfnet`` writes a file.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from visloc.features.base import EXTRACTORS, Extractor
from visloc.features.hfnet import HFNetExtractorConf, hfnet_capabilities, hfnet_postprocess, pad_to_cell
from visloc.models.hfnet import HFNet
from visloc.weights.hfnet import resolve_hfnet
from visloc.weights.load import WeightsError

logger = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "dense_descriptors", "global_descriptor")
#: ONNX metadata key holding the network's ``HFNetConf`` as JSON
CONF_KEY = "visloc_hfnet_conf"


def _export(model: HFNet, buffer: io.BytesIO, opset: int) -> None:
    cells = {0: "batch", 2: "cells_h", 3: "cells_w"}
    torch.onnx.export(model, (torch.rand(1, 1, 64, 96),), buffer, input_names=[INPUT_NAME],
                      output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, "logits": cells,
                                    "dense_descriptors": cells, "global_descriptor": {0: "batch"}})


def hfnet_to_onnx(model: HFNet, opset: int = 17) -> bytes:
    """Export ``model`` (eval mode, CPU) to ONNX bytes with dynamic batch, height and width.

    The serialized model carries its ``HFNetConf`` as JSON in the metadata key ``CONF_KEY``.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    model = model.eval().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose (no onnxscript needed)
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(model, buffer, opset)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONF_KEY, json.dumps(asdict(model.conf), sort_keys=True)
    return proto.SerializeToString()


def onnx_session(model: bytes | str | Path, num_threads: int = 0):  # noqa: ANN201  (onnxruntime is optional)
    """An onnxruntime session (CUDA first when onnxruntime has it, else CPU).

    Args:
        model: ONNX bytes or a file path.
        num_threads: intra-op threads; 0 uses ``torch.get_num_threads()`` (the same budget as torch).
    """
    import onnxruntime as ort

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise WeightsError(f"{path}: ONNX file not found")
        model = path.read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    # idle ORT threads otherwise spin after each run and slow the torch post-processing that follows
    # (46 -> 37 ms per VGA extraction on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise WeightsError(f"cannot load the HF-Net ONNX model ({e.__class__.__name__}: {str(e)[:80]})") from None


@dataclass(frozen=True)
class HFNetOnnxConf(HFNetExtractorConf):
    """``hfnet``'s fields, plus the ONNX file (None: exported in memory from ``weights``) and threads."""

    onnx: str | None = None
    num_threads: int = 0  # 0: torch.get_num_threads()


class HFNetOnnxExtractor(Extractor):
    """``hfnet`` with onnxruntime running the network; same outputs, gray input."""

    input_channels = 1
    exportable = True
    lightglue_features = None

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
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect, describe and aggregate ``image [1, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        padded = pad_to_cell(image).detach().cpu().float().numpy()
        outs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(padded)})
        pred = {k: torch.from_numpy(v) for k, v in zip(OUTPUT_NAMES, outs, strict=True)}
        out = hfnet_postprocess(pred, (image.shape[-2], image.shape[-1]), self.conf)
        return {k: v.to(image.device) for k, v in out.items()}


EXTRACTORS.register("hfnet-onnx", HFNetOnnxConf(), HFNetOnnxExtractor, capabilities=hfnet_capabilities)
