"""Export contract: every MODELS entry exports through ``visloc.export`` with parity, or writes nothing.

Parametrized over ``MODELS.names()``: a new exportable network is covered by adding its
registration (add its fast test overrides to ``FAST`` when its defaults are slow on a CPU).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from visloc.errors import InputError, UnknownNameError, VislocError
from visloc.export import Exportable, ExportError, ExportSpec, export_model, export_onnx, onnx_parity, onnx_session
from visloc.export.models import shape_args
from visloc.export.spec import OnnxModelError
from visloc.pipelines.export import export_registered
from visloc.registry import MODELS
from visloc.weights.load import WeightsError

#: per model, overrides that keep the export small on a CPU (random weights are always allowed here)
FAST: dict[str, list[str]] = {
    "netvlad-vgg16": ["num_clusters=4", "whiten_dim=32", "shape.height=48", "shape.width=64"],
    "loftr-coarse": ["shape.height=128", "shape.width=160"],
    "delg": ["preset=delg-r18", "shape.height=64", "shape.width=96", "shape.check_sizes=[[75, 101]]"],
    "event-vpr": ["model.bins=2", "model.input_size=64", "shape.height=30", "shape.width=40"],
}
NAMES = MODELS.names()


def _build(name: str, extra: tuple[str, ...] = ()) -> tuple[nn.Module, ExportSpec]:
    conf = MODELS.conf(name, ["allow_random=true", *FAST.get(name, []), *extra])
    model = MODELS.build_conf(name, conf)
    assert isinstance(model, Exportable) and not model.training
    return model, model.export_spec(**shape_args(conf))


def _cpu_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_outputs(model: nn.Module, spec: ExportSpec, inputs) -> list[np.ndarray]:
    with torch.inference_mode():
        out = model(*inputs.values())
    out = [out[n] for n in spec.output_names] if isinstance(out, dict) else [out] if torch.is_tensor(out) else out
    return [o.numpy() for o in out]


@pytest.fixture(scope="module", params=NAMES)
def exported(request, tmp_path_factory):
    """``(name, model, spec, result)`` of each registered model exported with its default check."""
    model, spec = _build(request.param)
    out = tmp_path_factory.mktemp(request.param) / "model.onnx"
    return request.param, model, spec, export_model(model, spec, out)


def test_the_shipped_models_are_registered():
    assert {"hfnet", "netvlad-vgg16"} <= set(NAMES)
    assert all(MODELS.kind_of(n) == "onnx" for n in NAMES)


def test_export_parity_on_every_check_input(exported):
    name, model, spec, result = exported
    assert spec.opset >= 17 and 0 < spec.atol <= 1e-3 and len(spec.check_inputs) >= 1, name
    assert len(result.max_abs_diff) == len(spec.output_names) * len(spec.all_inputs())
    assert max(result.max_abs_diff.values()) <= spec.atol
    assert result.out.is_file() and result.num_bytes == result.out.stat().st_size


def test_written_file_has_the_declared_graph(exported):
    name, model, spec, result = exported
    session = _cpu_session(result.out)
    assert [i.name for i in session.get_inputs()] == list(spec.input_names)
    assert [o.name for o in session.get_outputs()] == list(spec.output_names)
    # the file itself (not only the in-memory bytes) reproduces torch on the last check input
    inputs = spec.check_inputs[-1]
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    for g, e in zip(got, _torch_outputs(model, spec, inputs), strict=True):
        assert g.shape == e.shape and np.abs(g.astype(np.float64) - e.astype(np.float64)).max() <= spec.atol
    meta = session.get_modelmeta().custom_metadata_map
    assert set(spec.metadata) <= set(meta) and (getattr(model, "conf", None) is None or spec.conf_key in meta)


def test_failed_parity_writes_nothing_and_names_the_output(exported, tmp_path):
    name, model, spec, _ = exported
    first = spec.output_names[0]

    def shift(module, args, out):  # the graph is traced unshifted; eager torch then differs by 1
        if torch.jit.is_tracing():
            return out
        if isinstance(out, dict):
            return {**out, first: out[first] + 1}
        return (out[0] + 1, *out[1:]) if isinstance(out, tuple) else out + 1

    handle = model.register_forward_hook(shift)
    try:
        out = tmp_path / "bad.onnx"
        with pytest.raises(ExportError, match=rf"bad.onnx: .*differs from torch by 1\.\d+e\+00 on {first} .*"
                                              r"nothing written"):
            export_model(model, dataclasses.replace(spec, check_inputs=()), out)
    finally:
        handle.remove()
    assert list(tmp_path.iterdir()) == []


def test_atol_zero_fails(exported, tmp_path):
    """A check is only as good as its comparison: 0 tolerance fails on float32 differences."""
    name, model, spec, result = exported
    if max(list(result.max_abs_diff.values())[:len(spec.output_names)]) == 0:  # the example's
        pytest.skip(f"{name}: onnxruntime equals torch bit for bit")
    with pytest.raises(ExportError, match=r"> atol 0\)"):
        export_model(model, dataclasses.replace(spec, atol=0.0, check_inputs=()),
                     tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NAMES)
def test_static_shapes(name, tmp_path):
    model, spec = _build(name, ("shape.dynamic=false",))
    assert spec.dynamic_axes is None and len(spec.check_inputs) == 1
    result = export_model(model, spec, tmp_path / "static.onnx")
    assert max(result.max_abs_diff.values()) <= spec.atol
    shape = list(spec.example_inputs[spec.input_names[0]].shape)
    assert _cpu_session(result.out).get_inputs()[0].shape == shape  # every axis fixed


# ---------------------------------------------------------------- generic code on constructed models


class TwoInputs(nn.Module):
    """Two inputs, a tuple of outputs (like a dense matcher's graph)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, (a * b).sum(dim=1)

    def export_spec(self, n: int = 3) -> ExportSpec:
        gen = torch.Generator().manual_seed(0)
        ex = {"a": torch.rand(2, n, generator=gen), "b": torch.rand(2, n, generator=gen)}
        check = [{"a": torch.rand(5, n + 2, generator=gen), "b": torch.rand(5, n + 2, generator=gen)}]
        axes = {"a": {0: "B", 1: "N"}, "b": {0: "B", 1: "N"}, "sum": {0: "B", 1: "N"}, "dot": {0: "B"}}
        return ExportSpec(ex, ("sum", "dot"), axes, check_inputs=check, atol=1e-6)


def test_two_inputs_keep_their_order_and_names(tmp_path):
    model = TwoInputs()
    spec = model.export_spec()
    result = export_model(model, spec, tmp_path / "two.onnx")
    assert set(result.max_abs_diff) == {"sum 2x3", "dot 2x3", "sum 5x5", "dot 5x5"}
    session = onnx_session(result.out)
    a, b = np.arange(4, dtype=np.float32).reshape(1, 4), np.full((1, 4), 2, np.float32)
    s, d = session.run(["sum", "dot"], {"a": a, "b": b})
    np.testing.assert_array_equal(s, a + 2)
    np.testing.assert_array_equal(d, [12.0])


def test_repeated_sizes_get_distinct_labels():
    model = TwoInputs()
    spec = model.export_spec()
    same = dict(spec.example_inputs)
    wider = {k: torch.cat([v, v]) for k, v in same.items()}
    spec = dataclasses.replace(spec, check_inputs=[same, wider])
    diffs = onnx_parity(model, export_onnx(model, spec), spec)
    assert list(diffs)[::2] == ["sum 2x3", "sum 2x3 #2", "sum 4x3"]


def test_spec_checks():
    ex = {"x": torch.zeros(1, 2)}
    with pytest.raises(InputError, match="opset must be >= 17, got 13"):
        ExportSpec(ex, ("y",), opset=13)
    with pytest.raises(InputError, match="atol"):
        ExportSpec(ex, ("y",), atol=float("nan"))
    with pytest.raises(ValueError, match="static shapes"):
        ExportSpec(ex, ("y",), None, check_inputs=[{"x": torch.zeros(2, 2)}])
    with pytest.raises(ValueError, match="check_inputs"):
        ExportSpec(ex, ("y",), check_inputs=[{"z": torch.zeros(1, 2)}])
    with pytest.raises(ValueError, match="unknown inputs/outputs"):
        ExportSpec(ex, ("y",), {"w": {0: "B"}})
    with pytest.raises(ValueError, match="distinct"):
        ExportSpec(ex, ("x",))


def test_spec_that_does_not_fit_the_model():
    model = TwoInputs()
    spec = dataclasses.replace(model.export_spec(), output_names=("sum",), dynamic_axes=None, check_inputs=())
    with pytest.raises(ValueError, match=r"outputs \['sum', .*\] are not the spec's \['sum'\]"):
        export_onnx(model, spec)


def test_session_errors_name_the_file(tmp_path):
    with pytest.raises(OnnxModelError, match=r"no\.onnx: ONNX file not found"):
        onnx_session(tmp_path / "no.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxModelError, match=r"cannot load the ONNX model \("):
        onnx_session(tmp_path / "bad.onnx")


# ---------------------------------------------------------------- registered entries


def test_unknown_model_lists_the_exportable_ones(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown model 'nope'; known: .*hfnet.*netvlad-vgg16"):
        export_registered("nope", tmp_path / "x.onnx")


def test_unknown_conf_key_is_a_conf_error(tmp_path):
    with pytest.raises(VislocError, match=r"unknown key\(s\) \['heigth'\]"):
        export_registered("hfnet", tmp_path / "x.onnx", ["shape.heigth=480"], allow_random=True)


def test_netvlad_needs_weights_or_allow_random(tmp_path):
    with pytest.raises(WeightsError, match="netvlad-vgg16: no weights; pass --weights"):
        export_registered("netvlad-vgg16", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_netvlad_from_a_pytorch_netvlad_checkpoint(tmp_path):
    """A user's pytorch-NetVlad file (K=4, WPCA to 8) exports with its own K, G and preprocessing."""
    from visloc.models.netvlad_vgg import NetVLADVGG16

    torch.manual_seed(1)
    ref = NetVLADVGG16(num_clusters=4, whiten_dim=None)
    sd = {f"encoder.{k}": v for k, v in ref.encoder.state_dict().items()}
    sd["pool.conv.weight"] = torch.randn(4, 512, 1, 1)
    sd["pool.centroids"] = torch.rand(4, 512)
    sd["WPCA.0.weight"] = torch.randn(8, 4 * 512, 1, 1)
    sd["WPCA.0.bias"] = torch.randn(8)
    weights = tmp_path / "netvlad.pth.tar"
    torch.save({"state_dict": sd}, weights)
    out = tmp_path / "netvlad.onnx"
    result = export_registered("netvlad-vgg16", out, ["shape.height=32", "shape.width=48"], weights=weights)
    assert max(result.max_abs_diff.values()) <= 1e-4
    session = _cpu_session(out)
    assert session.get_outputs()[0].shape == ["batch", 8]
    meta = json.loads(session.get_modelmeta().custom_metadata_map["visloc_netvlad_vgg16"])
    assert meta["num_clusters"] == 4 and meta["whiten_dim"] == 8
    np.testing.assert_allclose(meta["input_mean"], [0.485, 0.456, 0.406], atol=1e-6)
    x = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    (got,) = session.run(None, {"image": x})
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), [1.0], atol=1e-5)


# ---------------------------------------------------------------- CLI


def test_cli_lists_and_rejects_names():
    from visloc.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and all(n in result.output for n in NAMES)
    result = runner.invoke(app, ["export", "nope", "--onnx", "x.onnx"])
    assert result.exit_code == 2 and "unknown model 'nope'; exportable: " + ", ".join(NAMES) in result.output


def test_cli_export_netvlad_with_set(tmp_path):
    from visloc.cli import app

    out = tmp_path / "n.onnx"
    sets = ["num_clusters=2", "whiten_dim=0", "shape.height=32", "shape.width=32", "shape.dynamic=false"]
    args = ["export", "netvlad-vgg16", "--onnx", str(out), "--allow-random", *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "global_descriptor 32x32: " in result.output and "global_descriptor 32x32 #2: " in result.output
    session = _cpu_session(out)
    assert session.get_inputs()[0].shape == [1, 3, 32, 32] and session.get_outputs()[0].shape == [1, 2 * 512]


def test_generic_export_code_imports_no_features_or_pipelines():
    """The layering: ``visloc.export`` (spec, runtime) sits below features/ and pipelines/."""
    import subprocess
    import sys

    code = ("import sys, visloc.export; bad = [m for m in sys.modules if m.startswith(('visloc.features', "
            "'visloc.pipelines', 'visloc.export.models'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
