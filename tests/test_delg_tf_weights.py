"""Official DELG weights into visloc's DELG (weights/converters/delg.py), without TensorFlow.

The mapping is checked on ``tests/data/tf_bundle/official_like``: a SavedModel written by TensorFlow with
the module structure of the official exports (widths / 64), whose ``paths.json`` gives, from the TF side,
the attribute path of each ``_model/variables/N`` key. With TensorFlow at hand (``VISLOC_TF_PYTHON``), a
slow test converts a full-width export and compares the network's outputs with TensorFlow's forward.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visloc.weights.converters import delg as conv
from visloc.weights.converters.tf_bundle import TFBundle
from visloc.weights.load import WeightsError

DATA = Path(__file__).parent / "data" / "tf_bundle"
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: the official_like fixture's network: ResNet-50 at widths / 64, autoencoder 2, embedding 32 -> 40
SMALL = SimpleNamespace(depth=50, layout="tf", local_dim=2, global_dim=40)


def _tf_keys() -> dict[str, str]:
    """``{attribute path below _model: checkpoint key}`` as TensorFlow's objects gave them."""
    paths = json.loads((DATA / "official_like" / "paths.json").read_text())
    return {v[len("_model/"): -len(SUFFIX)]: k for k, v in paths.items()}


class FakeBundle:
    """A dict of arrays behind the part of ``TFBundle``'s interface the converter uses."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str = "fake/variables/variables") -> None:
        self.arrays, self.prefix = arrays, Path(prefix)

    def names(self) -> list[str]:
        return sorted(self.arrays)

    def read(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def object_paths(self) -> dict[str, str]:
        return {k: k for k in self.arrays}


def _training_style() -> dict[str, np.ndarray]:
    """The official_like variables under a training checkpoint's names (``model/...``), with extras."""
    bundle = TFBundle.open(DATA / "official_like")
    arrays = {f"model/{path}{SUFFIX}": bundle.read(key) for path, key in _tf_keys().items()}
    arrays["model/backbone/conv1/kernel/.OPTIMIZER_SLOT/optimizer/momentum" + SUFFIX] = np.zeros((7, 7, 3, 1))
    arrays["model/desc_classification/cosine_weights" + SUFFIX] = np.zeros((40, 10), np.float32)
    arrays["save_counter" + SUFFIX] = np.array(3)
    return arrays


def test_official_like_export_maps_every_variable() -> None:
    bundle = TFBundle.open(DATA / "official_like")
    sd = conv.delg_state_dict_from_tf(bundle, SMALL)  # pyright: ignore[reportArgumentType]  # duck-typed conf
    keys = _tf_keys()
    assert len(sd) == len(keys) == 332  # 53 convs + 53 BNs of the ResNet, attention 3, autoencoder 2, embedding
    for module, path, kind in conv.module_table(SMALL):  # pyright: ignore[reportArgumentType]
        for ours, theirs in conv._PARAMS[kind]:
            tf_value = bundle.read(keys[f"{path}/{theirs}"])
            if ours == "weight" and kind == "conv":
                tf_value = tf_value.transpose(3, 2, 0, 1)
            elif ours == "weight" and kind == "dense":
                tf_value = tf_value.T
            assert np.array_equal(sd[f"{module}.{ours}"].numpy(), tf_value), (module, ours)
    # hand-written spot checks of the table
    k = bundle.read(keys["backbone/l3a/conv_shortcut/kernel"])
    assert torch.equal(sd["backbone.layer2.0.downsample.0.weight"], torch.from_numpy(k).permute(3, 2, 0, 1))
    assert sd["backbone.conv1.weight"].shape == (1, 3, 7, 7)
    assert sd["embedding.weight"].shape == (40, 32)
    assert torch.equal(sd["backbone.layer3.5.bn3.running_var"],
                       torch.from_numpy(bundle.read(keys["backbone/l4f/bn2c/moving_variance"])))
    assert torch.equal(sd["attention.bn.weight"], torch.from_numpy(bundle.read(keys["attention/bn_conv1/gamma"])))
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())


def test_training_checkpoint_names_and_extras_are_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    reference = conv.delg_state_dict_from_tf(TFBundle.open(DATA / "official_like"), SMALL)  # pyright: ignore
    with caplog.at_level("DEBUG", logger="visloc.weights.converters.delg"):
        sd = conv.delg_state_dict_from_tf(FakeBundle(_training_style()), SMALL)  # pyright: ignore
    assert sd.keys() == reference.keys() and all(torch.equal(sd[k], reference[k]) for k in sd)
    assert "3 TF tensors not converted" in caplog.text and "cosine_weights" in caplog.text


def test_missing_and_extra_variables_are_named() -> None:
    arrays = _training_style()
    del arrays["model/autoencoder/conv1/kernel" + SUFFIX]
    with pytest.raises(WeightsError, match=r"fake/variables/variables: no TF variable autoencoder/conv1/kernel for "
                                           r"visloc parameter autoencoder\.conv1\.weight \(an export without the "
                                           r"autoencoder\? use a conf with local_dim=0\)"):
        conv.delg_state_dict_from_tf(FakeBundle(arrays), SMALL)  # pyright: ignore
    no_autoencoder = SimpleNamespace(depth=50, layout="tf", local_dim=0, global_dim=40)
    with pytest.raises(WeightsError, match=r"TF variable autoencoder/conv1/bias has no visloc parameter \(4 such"):
        conv.delg_state_dict_from_tf(FakeBundle(_training_style()), no_autoencoder)  # pyright: ignore
    r101 = SimpleNamespace(depth=101, layout="tf", local_dim=2, global_dim=40)
    with pytest.raises(WeightsError, match=r"no TF variable backbone/l4g/conv2a/kernel for visloc parameter "
                                           r"backbone\.layer3\.6\.conv1\.weight \(an R50 checkpoint read as R101"):
        conv.delg_state_dict_from_tf(FakeBundle(_training_style()), r101)  # pyright: ignore


def test_bad_checkpoints() -> None:
    arrays = _training_style()
    arrays["ema/backbone/conv1/kernel" + SUFFIX] = arrays["model/backbone/conv1/kernel" + SUFFIX]
    with pytest.raises(WeightsError, match=r"two variables for 'backbone/conv1/kernel'"):
        conv.delg_state_dict_from_tf(FakeBundle(arrays), SMALL)  # pyright: ignore
    arrays = _training_style()
    arrays["model/backbone/conv1/kernel" + SUFFIX] = np.zeros((147, 1), np.float32)
    with pytest.raises(WeightsError, match=r"'model/backbone/conv1/kernel/.*' has shape \[147, 1\], expected a conv"):
        conv.delg_state_dict_from_tf(FakeBundle(arrays), SMALL)  # pyright: ignore
    with pytest.raises(WeightsError, match=r"saved_model/variables/variables: no variable under backbone/, "
                                           r"attention/ or autoencoder/ \(not a DELF/DELG TF2 checkpoint\? first keys: "
                                           r"_CHECKPOINTABLE_OBJECT_GRAPH, variables/0/"):
        conv.delg_state_dict_from_tf(TFBundle.open(DATA / "saved_model"), SMALL)  # pyright: ignore
    tv = SimpleNamespace(depth=50, layout="torchvision", local_dim=2, global_dim=40)
    with pytest.raises(WeightsError, match="need the tf layout at depth 50 or 101, got layout 'torchvision'"):
        conv.delg_state_dict_from_tf(FakeBundle(arrays), tv)  # pyright: ignore


def test_official_thresholds_by_release_folder(tmp_path: Path) -> None:
    assert conv.official_threshold(tmp_path / "r50delg_gldv2clean_20200914" / "variables") == 454.6
    assert conv.official_threshold(tmp_path / "r101delg_gldv2clean_20200914") == 357.48
    assert conv.official_threshold("x/delg_gld_20200520/variables/variables") == 175.0
    assert conv.official_threshold("x/r101delg_gld_20200814") == 166.1
    assert conv.official_threshold(tmp_path / "my_export") is None
    assert conv.OFFICIAL_PRESETS["r101delg_gld_20200814"] == "delg-r101"


# --- into the visloc network ----------------------------------------------------------------------


def _to_tf(model: torch.nn.Module, conf: object, root: str = "_model") -> dict[str, np.ndarray]:
    """The inverse mapping: a visloc DELG's state dict under official TF keys."""
    sd = model.state_dict()
    out = {}
    for module, path, kind in conv.module_table(conf):  # pyright: ignore[reportArgumentType]
        for ours, theirs in conv._PARAMS[kind]:
            v = sd[f"{module}.{ours}"].numpy()
            if ours == "weight":
                v = v.transpose(2, 3, 1, 0) if kind == "conv" else v.T
            out[f"{root}/{path}/{theirs}{SUFFIX}"] = np.ascontiguousarray(v)
    return out


def _random_delg(preset: str):
    delg = pytest.importorskip("visloc.models.delg")
    torch.manual_seed(0)
    model = delg.DELG(delg.resolve_preset(preset))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return delg, model


@pytest.mark.parametrize("preset", ["delg-r50", "delg-r101", "delf-r50"])
def test_table_covers_the_network(preset: str) -> None:
    delg, model = _random_delg(preset)
    names = {f"{m}.{p}" for m, _, kind in conv.module_table(model.conf) for p, _ in conv._PARAMS[kind]}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked") and k != "gem.p"}
    assert names == expected


def test_load_delg_tf_round_trip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    delg, model = _random_delg("delg-r50")
    fake = FakeBundle(_to_tf(model, model.conf))
    monkeypatch.setattr(conv.TFBundle, "open", classmethod(lambda cls, path, verify=True: fake))
    loaded = conv.load_delg_tf(tmp_path / "r50delg_gldv2clean_20200914", preset=None)
    assert not loaded.training and loaded.conf == model.conf
    got, want = loaded.state_dict(), model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.endswith("num_batches_tracked"))
    narrow = delg.DELGConf(50, "tf", attention_dim=256)
    with pytest.raises(WeightsError, match=r"attention\.conv1\.weight has shape \[512, 1024, 1, 1\] in the "
                                           r"checkpoint, the network's is \[256, 1024, 1, 1\]"):
        conv.load_delg_tf(tmp_path, conf=narrow)
    with pytest.raises(WeightsError, match=r"no TF variable backbone/l4g/conv2a/kernel .*\(an R50 checkpoint read as"):
        conv.load_delg_tf(tmp_path, preset="delg-r101")


# --- against TensorFlow ---------------------------------------------------------------------------


def _tf_python() -> str | None:
    return sys.executable if importlib.util.find_spec("tensorflow") else os.environ.get("VISLOC_TF_PYTHON")


@pytest.mark.slow
def test_converted_network_matches_tensorflow_forward(tmp_path: Path) -> None:
    python = _tf_python()
    if python is None:
        pytest.skip("tensorflow is not installed here (set VISLOC_TF_PYTHON to an interpreter with "
                    "tensorflow-cpu and tf-keras to run this test)")
    pytest.importorskip("visloc.models.delg")
    from visloc.weights.checkpoint import load_model_record

    release = tmp_path / "r50delg_gldv2clean_20200914"
    run = subprocess.run([python, str(DATA / "make_fixtures.py"), "delg", str(release), "--image", "161", "194"],
                         capture_output=True, text=True, timeout=900, check=False)
    if run.returncode == 3:
        pytest.skip("make_fixtures.py needs tf-keras (Keras 2) next to tensorflow")
    assert run.returncode == 0, run.stderr[-2000:]
    io = np.load(release / "io.npz")
    model = conv.load_delg_tf(release)
    with torch.no_grad():
        out = model(torch.from_numpy(io["image"]).permute(0, 3, 1, 2))
    pairs = {"block3": out.block3, "attention": out.attention, "local": out.local, "embedding": out.global_prelogits}
    for name, ours in pairs.items():
        assert ours is not None
        got = ours.numpy() if ours.ndim == 2 else ours.permute(0, 2, 3, 1).numpy()
        theirs = io[name]
        assert got.shape == theirs.shape, name
        scale = float(np.abs(theirs).max())
        assert scale > 0 and np.abs(got - theirs).max() <= 1e-4 * scale, (name, np.abs(got - theirs).max(), scale)
    dst = conv.convert_delg_tf(release, tmp_path / "delg.pt")
    record = load_model_record(dst, "delg")
    assert record.extras["attention_threshold"] == 454.6 and record.extras["normalisation"] == "delg"
