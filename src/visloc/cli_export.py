"""``visloc export ...``: write networks as ONNX files, checked against PyTorch."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from visloc.cli_common import run

export_app = typer.Typer(help="Export networks to ONNX (checked with onnxruntime before writing).",
                         no_args_is_help=True)

OnnxOut = Annotated[Path, typer.Option("--onnx", help="ONNX file to write.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="visloc HF-Net checkpoint (default: the shipped student).")]
OpsetOpt = Annotated[int, typer.Option(help="ONNX opset (>= 17).")]
CheckOpt = Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime with PyTorch first.")]
RandomOpt = Annotated[bool, typer.Option(help="Without weights, export a random network (speed tests).")]


@export_app.command("hfnet")
def export_hfnet_cmd(onnx: OnnxOut, weights: WeightsOpt = None, opset: OpsetOpt = 17, check: CheckOpt = True,
                     allow_random: RandomOpt = False) -> None:
    """Export HF-Net (dynamic height and width; NMS and top-k stay outside the graph)."""
    from visloc.pipelines.export import export_hfnet

    result = run(export_hfnet, weights, onnx, opset=opset, check=check, allow_random=allow_random)
    for line in result.lines():
        typer.echo(line)
