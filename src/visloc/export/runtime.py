"""Generic ONNX export: trace a network from its ``ExportSpec``, check it with onnxruntime, write atomically.

``export_model`` is the one path every exportable network takes: ``export_onnx`` (TorchScript
exporter, ``dynamo=False``, so no onnxscript is needed), then ``onnx_parity`` on the spec's example
and check inputs, then an atomic write only when every output agrees within ``spec.atol``; when the
check fails nothing is written and an ``ExportError`` names the output, the worst output and size.

Imports torch, ``visloc.errors`` and ``visloc.io.atomic`` only (onnx and onnxruntime lazily).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visloc.export.spec import ExportError, ExportResult, ExportSpec, OnnxModelError
from visloc.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def _conf_json(model: nn.Module) -> str | None:
    conf = getattr(model, "conf", None)
    if dataclasses.is_dataclass(conf) and not isinstance(conf, type):
        return json.dumps(dataclasses.asdict(conf), sort_keys=True)
    return None


def export_onnx(model: nn.Module, spec: ExportSpec) -> bytes:
    """Export ``model`` (put in eval mode on the CPU) to ONNX bytes as ``spec`` says.

    The serialized model carries the network's ``conf`` (when it is a dataclass) as JSON under
    ``spec.conf_key``, plus ``spec.metadata``.

    Raises:
        ValueError: the graph's outputs are not ``spec.output_names`` (the spec does not fit the model).
    """
    import onnx

    model = model.eval().cpu()
    buffer = io.BytesIO()
    dynamic_axes = {k: dict(v) for k, v in spec.dynamic_axes.items()} if spec.dynamic_axes is not None else None
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose (no onnxscript needed)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, tuple(t.cpu() for t in spec.example_inputs.values()), buffer,  # pyright: ignore[reportArgumentType]
                          input_names=list(spec.input_names), output_names=list(spec.output_names),
                          opset_version=spec.opset, dynamo=False, dynamic_axes=dynamic_axes)
    proto = onnx.load_from_string(buffer.getvalue())
    outputs = [o.name for o in proto.graph.output]
    if outputs != list(spec.output_names):
        raise ValueError(f"{type(model).__name__}: the graph's outputs {outputs} are not the spec's "
                         f"{list(spec.output_names)}")
    metadata = dict(spec.metadata)
    conf = _conf_json(model)
    if conf is not None:
        metadata[spec.conf_key] = conf
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def onnx_session(model: bytes | str | Path, num_threads: int = 0, what: str = "ONNX model"):  # noqa: ANN201
    """An onnxruntime session (CUDA first when onnxruntime has it, else CPU).

    Args:
        model: ONNX bytes or a file path.
        num_threads: intra-op threads; 0 uses ``torch.get_num_threads()`` (the same budget as torch).
        what: what the model is, for error messages (``"HF-Net ONNX model"``).

    Raises:
        OnnxModelError: the file is missing or onnxruntime cannot load it.
    """
    import onnxruntime as ort

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise OnnxModelError(f"{path}: ONNX file not found")
        model = path.read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    # idle ORT threads otherwise spin after each run and slow the torch post-processing that follows
    # (46 -> 37 ms per VGA HF-Net extraction on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise OnnxModelError(f"cannot load the {what} ({e.__class__.__name__}: {str(e)[:80]})") from None


def _torch_outputs(model: nn.Module, inputs: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> list[np.ndarray]:
    with torch.inference_mode():
        out: Any = model(*(t.cpu() for t in inputs.values()))
    if isinstance(out, Mapping):
        values = [out[n] for n in names]
    elif isinstance(out, torch.Tensor):
        values = [out]
    else:
        values = list(out)
    if len(values) != len(names):
        raise ValueError(f"{type(model).__name__} returned {len(values)} outputs, the spec names {len(names)}")
    return [v.detach().cpu().numpy() for v in values]


def _label(inputs: Mapping[str, torch.Tensor], seen: list[tuple[int, ...]]) -> str:
    """The report's name of ``inputs``: ``"HxW"`` of its first input.

    The full shape when only other axes differ from an earlier input of that size; ``"HxW #i"``
    for the i-th input of the same shape.
    """
    shape = tuple(next(iter(inputs.values())).shape)
    label = "x".join(map(str, shape[-2:]))
    same_size = [s for s in seen if s[-2:] == shape[-2:]]
    seen.append(shape)
    if shape in same_size:
        return f"{label} #{same_size.count(shape) + 1}"
    return "x".join(map(str, shape)) if same_size else label


def onnx_parity(model: nn.Module, onnx_bytes: bytes, spec: ExportSpec) -> dict[str, float]:
    """Largest ``|onnxruntime - torch|`` of each output on the example and every check input.

    Returns:
        ``{"<output> <HxW>": max abs difference}`` per output and input (``HxW``: the last two
        axes of the first input; its full shape, or a ``#i`` suffix, when sizes repeat).

    Raises:
        ExportError: an output's shape differs between onnxruntime and torch.
    """
    session = onnx_session(onnx_bytes, what="exported model")
    model = model.eval().cpu()
    diffs: dict[str, float] = {}
    seen: list[tuple[int, ...]] = []
    for inputs in spec.all_inputs():
        label = _label(inputs, seen)
        expected = _torch_outputs(model, inputs, spec.output_names)
        feed = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in inputs.items()}
        got = session.run(list(spec.output_names), feed)
        for name, value, ref in zip(spec.output_names, map(np.asarray, got), expected, strict=True):
            if value.shape != ref.shape:
                raise ExportError(f"{name} at {label}: onnxruntime shape {value.shape} != torch {ref.shape}")
            diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
            diffs[f"{name} {label}"] = float(diff.max()) if diff.size else 0.0
    return diffs


def export_model(model: nn.Module, spec: ExportSpec, out: str | Path, check: bool = True) -> ExportResult:
    """Export ``model`` to the ONNX file ``out``, written atomically only when the parity check holds.

    Args:
        model: the network (put in eval mode on the CPU).
        spec: its ``ExportSpec`` (usually ``model.export_spec(...)``).
        out: the ONNX file to write; left as it was when the check fails.
        check: run ``onnx_parity`` on ``spec.all_inputs()`` first and require every difference
            ``<= spec.atol``.

    Returns:
        the written path, its size and the measured differences (empty without ``check``).

    Raises:
        ExportError: a difference exceeds ``spec.atol`` (or a shape differs); nothing is written.
    """
    data = export_onnx(model, spec)
    diffs = onnx_parity(model, data, spec) if check else {}
    worst = max(diffs.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and not worst[1] <= spec.atol:  # "not <=" also catches NaN
        raise ExportError(f"{out}: onnxruntime differs from torch by {worst[1]:.2e} on {worst[0]} "
                          f"(> atol {spec.atol:g}); nothing written")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    logger.info("%s ONNX (%d bytes) -> %s", type(model).__name__, len(data), out)
    return ExportResult(Path(out), len(data), diffs)
