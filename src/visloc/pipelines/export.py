"""Export networks to ONNX, checked against PyTorch with onnxruntime before the file is written.

``export_hfnet`` exports ``HFNet.forward`` (dynamic batch, height and width; NMS and top-k stay
outside the graph), runs the ONNX model and the PyTorch model on a seeded random image at two sizes
(one of them an odd number of cells per side), and writes the file atomically only when every dense
output agrees within ``atol``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from visloc.errors import VislocError
from visloc.features.hfnet_onnx import INPUT_NAME, OUTPUT_NAMES, hfnet_to_onnx, onnx_session
from visloc.io.atomic import atomic_path
from visloc.models.hfnet import HFNet
from visloc.weights.hfnet import resolve_hfnet

logger = logging.getLogger(__name__)
#: ``(H, W)`` of the parity check's images: VGA, and an odd number of 8x8 cells per side
CHECK_SIZES = ((480, 640), (200, 328))


class ExportError(VislocError, ValueError):
    """An export whose ONNX model does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    """The written file and, when checked, the largest absolute difference per output and size."""

    out: Path
    num_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        out = [f"exported {self.num_bytes / 1e6:.1f} MB -> {self.out}"]
        out += [f"  onnxruntime vs torch, max |diff| {k}: {v:.2e}" for k, v in self.max_abs_diff.items()]
        return out


def onnx_parity(model: HFNet, onnx_bytes: bytes, sizes: tuple[tuple[int, int], ...] = CHECK_SIZES,
                seed: int = 0) -> dict[str, float]:
    """Largest ``|onnxruntime - torch|`` of each output on seeded random ``[1, 1, H, W]`` images.

    Returns:
        ``{"<output> HxW": max abs difference}`` for every output and size.
    """
    session = onnx_session(onnx_bytes)
    rng = np.random.default_rng(seed)
    diffs: dict[str, float] = {}
    for h, w in sizes:
        image = rng.random((1, 1, h, w), dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(image))
        outs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
        for name, value in zip(OUTPUT_NAMES, outs, strict=True):
            expected = ref[name].numpy()
            if value.shape != expected.shape:
                raise ExportError(f"{name} at {h}x{w}: onnxruntime shape {value.shape} != torch {expected.shape}")
            diffs[f"{name} {h}x{w}"] = float(np.abs(value - expected).max())
    return diffs


def export_hfnet(checkpoint: str | Path | None, out_onnx: str | Path, opset: int = 17, check: bool = True,
                 allow_random: bool = False, atol: float = 1e-4,
                 check_sizes: tuple[tuple[int, int], ...] = CHECK_SIZES) -> ExportResult:
    """Export an HF-Net checkpoint to ONNX.

    Args:
        checkpoint: a visloc HF-Net checkpoint; None: the shipped default student (or, with
            ``allow_random``, a random network of its architecture).
        out_onnx: the ONNX file to write (atomically; left as it was when the check fails).
        opset: ONNX opset (>= 17).
        check: compare onnxruntime with PyTorch at ``CHECK_SIZES`` before writing.
        allow_random: see ``visloc.weights.hfnet.resolve_hfnet``.
        atol: largest absolute difference accepted on any output.
        check_sizes: ``(H, W)`` of the check's images (multiples of 8).

    Returns:
        the written path, its size and the measured differences.
    """
    model = resolve_hfnet(str(checkpoint) if checkpoint is not None else None, allow_random).cpu().eval()
    data = hfnet_to_onnx(model, opset)
    diffs = onnx_parity(model, data, check_sizes) if check else {}
    worst = max(diffs.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and not worst[1] <= atol:
        raise ExportError(f"{out_onnx}: onnxruntime differs from torch by {worst[1]:.2e} on {worst[0]} "
                          f"(> atol {atol:g}); nothing written")
    with atomic_path(out_onnx) as tmp:
        tmp.write_bytes(data)
    logger.info("HF-Net ONNX (%d bytes) -> %s", len(data), out_onnx)
    return ExportResult(Path(out_onnx), len(data), diffs)
