"""``visloc export NAME``: build a registered network (``MODELS``), export it to ONNX, check, write.

``export_registered`` builds the ``MODELS`` entry ``name`` from its conf (weights, ``allow_random``
and the ``shape`` options of its ``export_spec``), then takes the one generic path
``visloc.export.export_model``: TorchScript export, onnxruntime vs PyTorch on the spec's example and
check inputs, atomic write only when every output agrees within the spec's ``atol``.
``export_hfnet`` is that path for ``hfnet`` with the historical arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from visloc.conf import parse_overrides
from visloc.export import Exportable, ExportError, ExportResult, export_model
from visloc.io.locks import output_lock
from visloc.io.outputs import check_file_output, has_magic
from visloc.models.hfnet import ONNX_CHECK_SIZES
from visloc.registry import MODELS

#: ``(H, W)`` of HF-Net's parity check's images: VGA, and an odd number of 8x8 cells per side
CHECK_SIZES = ONNX_CHECK_SIZES

__all__ = ["CHECK_SIZES", "ExportError", "ExportResult", "export_hfnet", "export_registered"]


def export_registered(name: str, out: str | Path, overrides: Mapping[str, Any] | Sequence[str] = (), *,
                      weights: str | Path | None = None, allow_random: bool = False, opset: int | None = None,
                      atol: float | None = None, check: bool = True) -> ExportResult:
    """Export the ``MODELS`` entry ``name`` to the ONNX file ``out``.

    Args:
        name: a registered exportable model (``MODELS.names()``).
        out: the ONNX file to write (atomically; left as it was when the check fails).
        overrides: conf overrides (``key=value`` strings or a mapping), e.g. ``shape.height=480``.
        weights: the weights file (sets the conf's ``weights``).
        allow_random: without weights, export a random network (sets ``allow_random``).
        opset: ONNX opset (>= 17); None: the spec's.
        atol: parity tolerance; None: the spec's.
        check: compare onnxruntime with PyTorch before writing.

    Returns:
        the written path, its size and the measured differences.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the exportable ones).
        ExportError: parity failed; nothing written.
        OutputError: ``out`` exists and is not an ONNX file (a photo, a folder, a weights file).
        OutputLockedError: another job is writing ``out``.
    """
    # an ONNX file is a ModelProto: its first field is ir_version (field 1, varint: byte 0x08)
    check_file_output(out, "ONNX", lambda p: has_magic(p, b"\x08"), "--onnx")
    with output_lock(out, "--onnx"):
        return _export(name, out, overrides, weights, allow_random, opset, atol, check)


def _export(name: str, out: str | Path, overrides: Mapping[str, Any] | Sequence[str], weights: str | Path | None,
            allow_random: bool, opset: int | None, atol: float | None, check: bool) -> ExportResult:
    sets = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    if weights is not None:
        sets["weights"] = str(weights)
    if allow_random:
        sets["allow_random"] = True
    conf = MODELS.conf(name, sets)
    model = MODELS.build_conf(name, conf)
    if not (isinstance(model, nn.Module) and isinstance(model, Exportable)):
        raise TypeError(f"model {name!r}: {type(model).__name__} does not implement export_spec")
    from visloc.export.models import shape_args  # the MODELS conf contract: conf.shape

    spec = model.export_spec(**shape_args(conf))
    changes = {k: v for k, v in (("opset", opset), ("atol", atol)) if v is not None}
    if changes:
        spec = dataclasses.replace(spec, **changes)
    return export_model(model, spec, out, check=check)


def export_hfnet(checkpoint: str | Path | None, out_onnx: str | Path, opset: int = 17, check: bool = True,
                 allow_random: bool = False, atol: float = 1e-4,
                 check_sizes: tuple[tuple[int, int], ...] = CHECK_SIZES) -> ExportResult:
    """Export an HF-Net checkpoint to ONNX (``export_registered("hfnet", ...)``).

    Args:
        checkpoint: a visloc HF-Net checkpoint; None: the shipped default student (or, with
            ``allow_random``, a random network of its architecture).
        out_onnx: the ONNX file to write (atomically; left as it was when the check fails).
        opset: ONNX opset (>= 17).
        check: compare onnxruntime with PyTorch on the example (64x96) and ``check_sizes`` first.
        allow_random: see ``weights.hfnet.resolve_hfnet``.
        atol: largest absolute difference accepted on any output.
        check_sizes: ``(H, W)`` of the check's images (multiples of 8).
    """
    return export_registered("hfnet", out_onnx, {"shape": {"check_sizes": [list(s) for s in check_sizes]}},
                             weights=checkpoint, allow_random=allow_random, opset=opset, atol=atol, check=check)
