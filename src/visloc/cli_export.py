"""``visloc export NAME``: write a registered network (``visloc.registry.MODELS``) as an ONNX file.

One subcommand per ``MODELS`` name, all with the same options; the file is written only when
onnxruntime reproduces PyTorch on the model's check inputs. An unknown name lists the exportable ones.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from visloc.cli_common import SetOpt, fail, run
from visloc.registry import MODELS


class _ExportGroup(TyperGroup):
    """The ``export`` group: an unknown model name fails with the list of exportable ones (exit 2)."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            fail(f"unknown model {args[0]!r}; exportable: {', '.join(MODELS.names())}")
        return super().resolve_command(ctx, args)


export_app = typer.Typer(cls=_ExportGroup, no_args_is_help=True,
                         help="Export a registered network to ONNX (checked with onnxruntime before writing). "
                              "Shape options (the keywords of the model's export_spec): --set shape.KEY=VALUE, e.g. "
                              "shape.height=480 shape.width=640 shape.dynamic=false.")

OnnxOut = Annotated[Path, typer.Option("--onnx", help="ONNX file to write.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Weights file (default: the model's shipped weights).")]
OpsetOpt = Annotated[int, typer.Option(help="ONNX opset (>= 17).")]
CheckOpt = Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime with PyTorch first.")]
RandomOpt = Annotated[bool, typer.Option(help="Without weights, export a random network (speed tests).")]
SizeOpt = Annotated[Optional[str], typer.Option(help="Example / static size WxH (sets shape.width and shape.height).")]
TrtOpt = Annotated[Optional[Path], typer.Option("--trt", help="Also build an fp16 TensorRT engine here (needs a CUDA "
                                                              "GPU and the tensorrt package).")]


def size_sets(size: str | None) -> list[str]:
    """``--size 640x480`` as the overrides ``shape.width=640``, ``shape.height=480``."""
    if size is None:
        return []
    parts = size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        fail(f"--size: expected WxH such as 640x480, got {size!r}")
    return [f"shape.width={int(parts[0])}", f"shape.height={int(parts[1])}"]


def _command(name: str) -> Callable[..., None]:
    def export_cmd(onnx: OnnxOut, weights: WeightsOpt = None, set_: SetOpt = None, opset: OpsetOpt = 17,
                   check: CheckOpt = True, allow_random: RandomOpt = False, size: SizeOpt = None,
                   trt: TrtOpt = None) -> None:
        from visloc.pipelines.export import export_registered

        result = run(export_registered, name, onnx, [*size_sets(size), *(set_ or ())], weights=weights,
                     allow_random=allow_random, opset=opset, check=check)
        for line in result.lines():
            typer.echo(line)
        if trt is not None:
            from visloc.export.tensorrt import build_engine

            typer.echo(f"TensorRT engine -> {run(build_engine, result.out, trt)}")

    export_cmd.__doc__ = f"{MODELS.description_of(name)}."
    return export_cmd


for _name in MODELS.names():  # reads registry_index only: nothing heavy is imported
    export_app.command(_name)(_command(_name))
