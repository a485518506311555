"""TensorRT engines from exported ONNX files (``visloc export NAME --onnx F --trt ENGINE``).

Uses the ``tensorrt`` Python package (TensorRT 10's API: ``build_serialized_network``, no binding API)
where a CUDA GPU is present; elsewhere it says what is missing. An engine is specific to the GPU and the
TensorRT version that built it: build it on the machine that runs it. The equivalent command::

    trtexec --onnx=loftr_coarse.onnx --saveEngine=loftr_coarse.engine --fp16
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from visloc.errors import VislocError
from visloc.io.atomic import atomic_path


class TensorRTUnavailable(VislocError, RuntimeError):
    """No CUDA GPU, or no ``tensorrt`` package: an engine cannot be built here."""


def check_tensorrt() -> None:
    """Raise ``TensorRTUnavailable`` naming what is missing (a CUDA GPU, the ``tensorrt`` package)."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("--trt needs a CUDA GPU (none is visible here); the ONNX file was written: build "
                                  "the engine on the target machine with 'trtexec --onnx=FILE --saveEngine=ENGINE "
                                  "--fp16'")
    if importlib.util.find_spec("tensorrt") is None:
        raise TensorRTUnavailable("--trt needs the tensorrt Python package (pip install tensorrt), or use "
                                  "'trtexec --onnx=FILE --saveEngine=ENGINE --fp16'")


def build_engine(onnx_file: str | Path, engine: str | Path, fp16: bool = True, workspace_mb: int = 1024) -> Path:
    """Build a serialized TensorRT engine from ``onnx_file`` into ``engine`` (atomically).

    Raises:
        TensorRTUnavailable: no GPU or no tensorrt package.
        VislocError: TensorRT could not parse the file or build the engine (its first error is quoted).
    """
    check_tensorrt()
    import tensorrt as trt  # pyright: ignore[reportMissingImports]  # optional, GPU machines only

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_file).read_bytes()):
        raise VislocError(f"{onnx_file}: TensorRT cannot parse it ({parser.get_error(0)})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise VislocError(f"{onnx_file}: TensorRT failed to build an engine (see its log above)")
    with atomic_path(engine) as tmp:
        Path(tmp).write_bytes(bytes(blob))
    return Path(engine)
