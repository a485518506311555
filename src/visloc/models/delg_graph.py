"""``DELGGraph``: the DELF / DELG network at one scale as an ONNX graph with dynamic height and width.

Input ``image [1, 3, H, W]``, already normalised as the weights expect (DELF / DELG: RGB
``(255 x - 128) / 128``; the ``delg-onnx`` extractor normalises and builds the pyramid outside).
Outputs, as ``DELG.forward``'s:

- ``attention [1, 1, h, w]``: softplus attention scores (block3 cells, stride 32);
- ``local [1, D, h, w]``: local descriptors before L2 (DELG's autoencoder code; ``block3`` for DELF);
- ``global [1, G]``: the global descriptor, **L2-normalised** (``global_descriptor``; DELG only: a DELF
  network, without a global head, has no ``global`` output).

TF layout: its stem's "same" padding depends on each side's parity, which tracing would freeze at the
example's. The graph pads an odd side with one zero row / column before the network, whose stem then
pads the even side 2 before and 3 after: 3 and 3 in all, TF's padding of the odd side, so the graph
equals ``DELG.forward`` at every size (the same zeros, the same cells).

The ONNX metadata carries the ``DELGConf`` (``ONNX_CONF_KEY``) and what the checkpoint records for
extraction (``ONNX_EXTRAS_KEY``: normalisation, attention threshold), as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visloc.errors import InputError
from visloc.export.spec import ExportSpec
from visloc.models.delg import DELG

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("attention", "local", "global")
ONNX_CONF_KEY = "visloc_delg_conf"
ONNX_EXTRAS_KEY = "visloc_delg_extras"
#: ``(H, W)`` of the parity check's other images: a common aspect and one with odd sides
ONNX_CHECK_SIZES = ((120, 160), (101, 75))


class DELGGraph(nn.Module):
    """The exportable one-scale graph of a ``DELG`` network (module docstring).

    Args:
        model: the network (eval mode).
        extras: what its checkpoint records besides the weights (written to the ONNX metadata).
    """

    def __init__(self, model: DELG, extras: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.conf = model.conf
        self.extras = {k: v for k, v in (extras or {}).items() if isinstance(v, (int, float, str, bool))}

    @property
    def output_names(self) -> tuple[str, ...]:
        """``attention``, ``local`` and, with a global head, ``global``."""
        return ONNX_OUTPUTS if self.model.global_dim else ONNX_OUTPUTS[:2]

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image [1, 3, H, W]`` -> ``{attention [1, 1, h, w], local [1, D, h, w][, global [1, G]]}``."""
        if self.conf.layout == "tf":
            # shapes stay symbolic in the trace: the pad is the parity of each side (0 or 1)
            image = F.pad(image, (image.shape[-1] % 2, 0, image.shape[-2] % 2, 0))
        out = self.model(image, local=True, global_=bool(self.model.global_dim))
        if out.attention is None or out.local is None:
            raise RuntimeError("DELG.forward(local=True) returned no attention")
        outputs = {"attention": out.attention, "local": out.local}
        if out.global_descriptor is not None:
            outputs["global"] = out.global_descriptor
        return outputs

    def export_spec(self, height: int = 96, width: int = 128, dynamic: bool = True,
                    check_sizes: tuple[tuple[int, int], ...] = ONNX_CHECK_SIZES, seed: int = 0) -> ExportSpec:
        """ONNX spec of ``forward`` (``visloc.export``): batch 1, dynamic height and width.

        Args:
            height: the example's ``H`` (>= 32).
            width: the example's ``W`` (>= 32).
            dynamic: dynamic ``H`` and ``W``; else static shapes (the check runs a second image of the size).
            check_sizes: ``(H, W)`` of the parity check's other images when dynamic.
            seed: seed of the random example images (values in ``[-1, 1]``, as normalised input).
        """
        sizes = ((height, width), *check_sizes) if dynamic else ((height, width), (height, width))
        for h, w in sizes:
            if min(h, w) < 32:
                raise InputError(f"delg export: image sides must be >= 32 pixels, got {h}x{w}")
        gen = torch.Generator().manual_seed(seed)
        images = [{ONNX_INPUT: torch.rand(1, 3, h, w, generator=gen) * 2 - 1} for h, w in sizes]
        cells = {2: "cells_h", 3: "cells_w"}
        axes: dict[str, dict[int, str]] = {ONNX_INPUT: {2: "height", 3: "width"}, "attention": cells, "local": cells}
        return ExportSpec(images[0], self.output_names, axes if dynamic else None, check_inputs=images[1:],
                          atol=1e-4, conf_key=ONNX_CONF_KEY,
                          metadata={ONNX_EXTRAS_KEY: json.dumps(self.extras, sort_keys=True)})


__all__ = ["ONNX_CHECK_SIZES", "ONNX_CONF_KEY", "ONNX_EXTRAS_KEY", "ONNX_INPUT", "ONNX_OUTPUTS", "DELGGraph"]
