"""``delg-onnx``: the ``delg`` extractor with the network run by onnxruntime at each pyramid scale.

The graph is ``models.delg_graph.DELGGraph`` (``image [1, 3, H, W]`` normalised -> ``attention``,
``local``, ``global``; dynamic height and width), written by ``visloc export delg``. Normalisation,
the pyramid's resizing, selection, keypoint geometry and aggregation run outside the graph with the
``delg`` extractor's code (``features.delg_pipeline``), so both give the same features. The batch
runs image by image (the graph has batch 1), and the graph computes conv5 and the global descriptor
at every scale (onnxruntime does not prune the nodes of outputs not fetched: measured, the same time),
where torch skips conv5 at the 4 local-only scales: about 18 % of a ResNet-50 forward at those scales,
some 10 % of the whole pyramid at 1024 px. The architecture (for the receptive field) and the
checkpoint's records (normalisation, attention threshold) are read from the ONNX metadata.

Without an ``onnx`` file the extractor exports its network in memory at build time (``weights``, or
a random ``preset`` network with ``allow_random``), which takes seconds.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from visloc import conf_ranges as ranges
from visloc.conf import ConfError, load_conf
from visloc.export import OnnxModelError, export_onnx, onnx_session
from visloc.features.base import EXTRACTORS
from visloc.features.delg import DELGBase, DELGExtractorConf, delg_capabilities, load_delg
from visloc.features.delg_pipeline import LevelOutput
from visloc.models.delg import DELGConf
from visloc.models.delg_graph import ONNX_CONF_KEY, ONNX_EXTRAS_KEY, ONNX_INPUT, ONNX_OUTPUTS, DELGGraph
from visloc.weights.load import WeightsError


@dataclass(frozen=True)
class DELGOnnxConf(DELGExtractorConf):
    """``delg``'s fields, plus the ONNX file (None: exported in memory from ``weights``) and threads."""

    onnx: str | None = None
    num_threads: int = 0  # 0: torch.get_num_threads()

    def __post_init__(self) -> None:
        super().__post_init__()
        ranges.threads(self)


def delg_onnx_bytes(weights: str | None, preset: str = "delg-r50", allow_random: bool = False) -> bytes:
    """The ``DELGGraph`` of a checkpoint (or random ``preset`` network) as ONNX bytes, unchecked."""
    model, extras = load_delg(weights, preset, allow_random)
    graph = DELGGraph(model.cpu().eval(), extras).eval()
    with warnings.catch_warnings():  # DELG.forward's shape checks: constants in the graph, by design
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
        return export_onnx(graph, graph.export_spec())


def _metadata(session: Any, where: str) -> tuple[DELGConf, Mapping[str, Any]]:
    meta = session.get_modelmeta().custom_metadata_map
    try:
        arch = load_conf(DELGConf, json.loads(meta[ONNX_CONF_KEY]), where=f"{where}: {ONNX_CONF_KEY}")
        extras = json.loads(meta.get(ONNX_EXTRAS_KEY, "{}"))
    except (KeyError, ValueError, ConfError) as e:
        raise WeightsError(f"{where}: not a visloc DELG ONNX model (metadata {ONNX_CONF_KEY}: {str(e)[:80]})"
                           ) from None
    return arch, extras


class DELGOnnxExtractor(DELGBase):
    """``delg`` with onnxruntime running the network; same outputs, RGB input."""

    mode = "delg"

    def __init__(self, conf: DELGOnnxConf) -> None:
        super().__init__(conf)
        where = conf.onnx or "delg-onnx (exported in memory)"
        source = conf.onnx if conf.onnx is not None else delg_onnx_bytes(conf.weights, conf.preset, conf.allow_random)
        try:
            self.session = onnx_session(source, conf.num_threads, what="DELG ONNX model")
        except OnnxModelError as e:
            raise WeightsError(str(e)) from None
        inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != [ONNX_INPUT] or self.outputs != ONNX_OUTPUTS:
            raise WeightsError(f"{where}: not a DELG ONNX model (inputs {inputs}, outputs {list(self.outputs)}; "
                               f"expected [{ONNX_INPUT!r}], {list(ONNX_OUTPUTS)})")
        arch, extras = _metadata(self.session, where)
        self.setup(arch, extras)
        self.eval()

    def net(self, image: torch.Tensor, local: bool, global_: bool) -> LevelOutput:
        """The graph at one scale, image by image (every output is computed; those asked for are returned)."""
        names = [n for n, want in zip(ONNX_OUTPUTS, (local, local, global_), strict=True) if want]
        x = image.detach().float().cpu().numpy()
        runs = [[np.asarray(a) for a in self.session.run(names, {ONNX_INPUT: np.ascontiguousarray(x[b:b + 1])})]
                for b in range(len(x))]
        out = {n: torch.from_numpy(np.concatenate([r[k] for r in runs])).to(image.device) for k, n in enumerate(names)}
        return LevelOutput(out.get("attention"), out.get("local"), out.get("global"))


EXTRACTORS.register("delg-onnx", DELGOnnxConf(), DELGOnnxExtractor, capabilities=delg_capabilities("delg"))

__all__ = ["DELGOnnxConf", "DELGOnnxExtractor", "delg_onnx_bytes"]
