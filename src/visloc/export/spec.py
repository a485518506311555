"""What a network declares to be exported: ``ExportSpec``, the ``Exportable`` protocol, results, errors.

A network that exports implements ``export_spec(**shape_args) -> ExportSpec``: its example inputs
(named, in ``forward``'s argument order), the names of its outputs, which axes are dynamic (or None
for static shapes), the opset, other inputs for the parity check and the tolerance of that check.
Data-dependent post-processing (NMS, top-k, match extraction) stays outside the graph as plain
functions, so the graph is pure tensor code.

This module imports only torch and ``visloc.errors``: features, pipelines and the registries build
on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from visloc.errors import InputError, VislocError

#: the lowest ONNX opset visloc exports (LayerNormalization, stable GridSample/Resize semantics)
MIN_OPSET = 17


class ExportError(VislocError, ValueError):
    """An export whose ONNX model does not reproduce the PyTorch model (nothing was written)."""


class OnnxModelError(VislocError, ValueError):
    """An ONNX file that is missing or that onnxruntime cannot load."""


@dataclass(frozen=True)
class ExportSpec:
    """How to export one network to ONNX and how to check the result.

    Attributes:
        example_inputs: input name -> example tensor, in the order of ``forward``'s positional
            arguments; the graph is traced on these.
        output_names: names of ``forward``'s outputs: the keys of a returned dict (in its order),
            or one name per returned tensor.
        dynamic_axes: ``{input or output name: {axis: symbolic name}}``; None exports static
            shapes (every check input must then have the example's shapes).
        opset: ONNX opset, >= ``MIN_OPSET``.
        check_inputs: more input dicts (same names) the parity check runs besides the example:
            other sizes for dynamic shapes, other values for static ones.
        atol: largest ``|onnxruntime - torch|`` accepted on any output element.
        conf_key: ONNX metadata key under which the network's ``conf`` (a dataclass) is stored as JSON.
        metadata: more ONNX metadata entries (key -> string).
    """

    example_inputs: Mapping[str, torch.Tensor]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    opset: int = MIN_OPSET
    check_inputs: Sequence[Mapping[str, torch.Tensor]] = ()
    atol: float = 1e-4
    conf_key: str = "visloc_conf"
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(self.output_names))
        object.__setattr__(self, "check_inputs", tuple(self.check_inputs))
        if self.opset < MIN_OPSET:
            raise InputError(f"opset must be >= {MIN_OPSET}, got {self.opset}")
        if not self.atol >= 0:
            raise InputError(f"atol must be >= 0, got {self.atol}")
        names = list(self.example_inputs)
        if not names or not self.output_names:
            raise ValueError("ExportSpec needs at least one input and one output")
        if len(set(self.output_names)) != len(self.output_names) or set(names) & set(self.output_names):
            raise ValueError(f"ExportSpec: input and output names must be distinct, got {names} and "
                             f"{list(self.output_names)}")
        unknown = set(self.dynamic_axes or {}) - set(names) - set(self.output_names)
        if unknown:
            raise ValueError(f"ExportSpec.dynamic_axes names unknown inputs/outputs {sorted(unknown)}")
        for i, inputs in enumerate(self.check_inputs):
            if list(inputs) != names:
                raise ValueError(f"ExportSpec.check_inputs[{i}]: inputs {list(inputs)} != {names}")
            if self.dynamic_axes is None:
                for n in names:
                    if inputs[n].shape != self.example_inputs[n].shape:
                        raise ValueError(f"ExportSpec.check_inputs[{i}][{n!r}]: shape {tuple(inputs[n].shape)} "
                                         f"!= example {tuple(self.example_inputs[n].shape)} (static shapes)")

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the graph's inputs, in order."""
        return tuple(self.example_inputs)

    def all_inputs(self) -> list[Mapping[str, torch.Tensor]]:
        """The example followed by the check inputs: what the parity check runs."""
        return [self.example_inputs, *self.check_inputs]


@runtime_checkable
class Exportable(Protocol):
    """A network that exports to ONNX (``visloc.export.export_model``).

    ``export_spec``'s keyword arguments are the network's shape options (example size, static or
    dynamic shapes...); every one has a default, so ``export_spec()`` is a valid spec.
    """

    def export_spec(self, **shape_args: Any) -> ExportSpec:
        """The ONNX spec of this network for the given shape options."""
        ...


@dataclass(frozen=True)
class ExportResult:
    """The written file and, when checked, the largest absolute difference per output and input size."""

    out: Path
    num_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        out = [f"exported {self.num_bytes / 1e6:.1f} MB -> {self.out}"]
        out += [f"  onnxruntime vs torch, max |diff| {k}: {v:.2e}" for k, v in self.max_abs_diff.items()]
        return out
