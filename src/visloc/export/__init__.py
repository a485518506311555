"""Export networks to ONNX through one path, checked against PyTorch before the file is written.

A network implements ``Exportable.export_spec(**shape_args) -> ExportSpec``; ``export_model``
exports it, checks parity with onnxruntime and writes atomically. Shipped exportable networks are
registered in ``visloc.registry.MODELS`` (``visloc.export.models``) and exported by
``visloc export NAME``.
"""

from visloc.export.runtime import export_model, export_onnx, onnx_parity, onnx_session
from visloc.export.spec import MIN_OPSET, Exportable, ExportError, ExportResult, ExportSpec, OnnxModelError

__all__ = ["MIN_OPSET", "ExportError", "ExportResult", "ExportSpec", "Exportable", "OnnxModelError",
           "export_model", "export_onnx", "onnx_parity", "onnx_session"]
