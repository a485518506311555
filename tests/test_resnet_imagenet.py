"""ImageNet initialisation of the DELG backbone (weights/converters/resnet_imagenet.py).

Keras h5 files are built here with h5py from a random torchvision ResNet-50 (nothing is downloaded), in
both naming schemes; the new scheme's real names come from ``tests/data/keras_resnet50_notop_names.json``,
recorded from ``tf.keras.applications.ResNet50(weights=None, include_top=False).save_weights`` (TF 2.21).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from visloc.conf import ConfError, apply_overrides
from visloc.train.delg.recipe import DELGRecipe
from visloc.weights.converters import resnet_imagenet as ri
from visloc.weights.load import WeightsError
from visloc.weights.records import DELG_RGB

NAMES = Path(__file__).parent / "data" / "keras_resnet50_notop_names.json"
BLOCKS = (3, 4, 6, 3)


def _layers(scheme: str):
    """``(torch conv, torch bn, keras conv layer, keras bn layer)`` of ResNet-50, written out by hand."""
    yield ("conv1", "bn1", "conv1", "bn_conv1") if scheme == "old" else ("conv1", "bn1", "conv1_conv", "conv1_bn")
    for stage, count in zip(range(2, 6), BLOCKS, strict=True):
        for k in range(count):
            t = f"layer{stage - 1}.{k}"
            for j, branch in ((1, "2a"), (2, "2b"), (3, "2c")):
                if scheme == "old":
                    b = f"{stage}{'abcdef'[k]}_branch{branch}"
                    yield f"{t}.conv{j}", f"{t}.bn{j}", f"res{b}", f"bn{b}"
                else:
                    yield f"{t}.conv{j}", f"{t}.bn{j}", f"conv{stage}_block{k + 1}_{j}_conv", \
                        f"conv{stage}_block{k + 1}_{j}_bn"
            if k == 0:
                old = (f"res{stage}a_branch1", f"bn{stage}a_branch1")
                new = (f"conv{stage}_block1_0_conv", f"conv{stage}_block1_0_bn")
                yield (f"{t}.downsample.0", f"{t}.downsample.1", *(old if scheme == "old" else new))


def _weight_names(layer: str, kind: str, style: str) -> list[str]:
    if style == "keras1":  # Keras 1.x: <layer>_W, _b, _gamma, _beta, _running_mean, _running_std
        leaves = ("W", "b") if kind == "conv" else ("gamma", "beta", "running_mean", "running_std")
        return [f"{layer}_{leaf}:0" for leaf in leaves]
    leaves = ("kernel", "bias") if kind == "conv" else ("gamma", "beta", "moving_mean", "moving_variance")
    return [f"{layer}/{leaf}:0" for leaf in leaves]


def write_h5(path: Path, layers: list[tuple[str, list[tuple[str, np.ndarray]]]], fillers: int = 2) -> Path:
    """A Keras 2 weights h5: ``layer_names`` (with weightless layers between), ``weight_names``, datasets."""
    with h5py.File(path, "w") as f:
        names = []
        for i, (layer, weights) in enumerate(layers):
            if i < fillers:
                names.append(f"activation_{i}")
                f.create_group(f"activation_{i}").attrs["weight_names"] = np.array([], dtype="S1")
            names.append(layer)
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
            for w, arr in weights:
                g.create_dataset(w, data=arr)
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.1.2"
    return path


@pytest.fixture(scope="module")
def torch_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return net.state_dict()


def keras_layers(sd: dict[str, torch.Tensor], scheme: str, style: str, drop: str = ""):
    """The h5 layers of ``sd`` in ``scheme`` and weight-name ``style``, and the conv biases written."""
    rng = np.random.default_rng(1)
    layers, biases = [], {}
    for tconv, tbn, kconv, kbn in _layers(scheme):
        kernel = sd[f"{tconv}.weight"].permute(2, 3, 1, 0).numpy()
        biases[tconv] = rng.standard_normal(kernel.shape[3]).astype(np.float32)
        bn = [sd[f"{tbn}.{k}"].numpy() for k in ("weight", "bias", "running_mean", "running_var")]
        for layer, kind, arrays in ((kconv, "conv", [kernel, biases[tconv]]), (kbn, "bn", bn)):
            if layer != drop:
                layers.append((layer, list(zip(_weight_names(layer, kind, style), arrays, strict=True))))
    return layers, biases


@pytest.mark.parametrize(("scheme", "style"), [("old", "keras1"), ("old", "keras2"), ("new", "keras2")])
def test_keras_h5_into_the_tf_layout(tmp_path: Path, torch_sd, scheme: str, style: str) -> None:
    layers, biases = keras_layers(torch_sd, scheme, style)
    sd, found = ri.keras_resnet_state_dict(write_h5(tmp_path / "w.h5", layers), 50, conv_bias=True)
    assert found == scheme
    wanted = {k for k in torch_sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(sd) == wanted | {f"{c}.bias" for c in biases}
    for k in wanted:
        assert torch.equal(sd[k], torch_sd[k]), k
    for conv, b in biases.items():
        assert np.array_equal(sd[f"{conv}.bias"].numpy(), b)


def test_keras_biases_fold_into_the_torchvision_layout(tmp_path: Path, torch_sd) -> None:
    layers, biases = keras_layers(torch_sd, "old", "keras2")
    sd, _ = ri.keras_resnet_state_dict(write_h5(tmp_path / "w.h5", layers), 50, conv_bias=False)
    assert not any(k.endswith(".bias") and ("conv" in k or "downsample.0" in k) for k in sd)
    mean = torch_sd["layer2.0.downsample.1.running_mean"].numpy() - biases["layer2.0.downsample.0"]
    assert np.allclose(sd["layer2.0.downsample.1.running_mean"].numpy(), mean)
    # BN(conv(x) + b) with the file's mean == BN(conv(x)) with the folded one
    x = torch.randn(1, 64, 9, 9)
    w, b = sd["layer1.0.conv1.weight"], torch.from_numpy(biases["layer1.0.conv1"])
    bn = [torch_sd[f"layer1.0.bn1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
    ref = F.batch_norm(F.conv2d(x, w, b), bn[0], bn[1], bn[2], bn[3], eps=1e-3)
    folded = F.batch_norm(F.conv2d(x, w), sd["layer1.0.bn1.running_mean"], bn[1], bn[2], bn[3], eps=1e-3)
    assert torch.allclose(ref, folded, atol=1e-5)


def test_real_keras_names_are_read(tmp_path: Path) -> None:
    record = json.loads(NAMES.read_text())
    rng = np.random.default_rng(2)
    values = {w: rng.standard_normal(shape).astype(np.float32) for ws in record["weights"].values() for w, shape in ws}
    with h5py.File(tmp_path / "keras.h5", "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in record["layer_names"]])
        for layer in record["layer_names"]:
            ws = record["weights"].get(layer, [])
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in ws], dtype="S64")
            for w, _ in ws:
                g.create_dataset(w, data=values[w])
    sd, scheme = ri.keras_resnet_state_dict(tmp_path / "keras.h5", 50, conv_bias=True)
    assert scheme == "new" and len(sd) == len(values) == 318
    assert np.array_equal(sd["layer3.5.conv3.weight"].numpy(),
                          values["conv4_block6_3_conv/kernel:0"].transpose(3, 2, 0, 1))
    assert np.array_equal(sd["layer4.0.downsample.1.running_var"].numpy(),
                          values["conv5_block1_0_bn/moving_variance:0"])
    assert np.array_equal(sd["bn1.weight"].numpy(), values["conv1_bn/gamma:0"])
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert record["bn_epsilon"] == [ri.BN_EPS["new"]]


def test_wrong_keras_files_are_named(tmp_path: Path, torch_sd) -> None:
    layers, _ = keras_layers(torch_sd, "old", "keras2", drop="res4f_branch2c")
    with pytest.raises(WeightsError, match=r"short\.h5: Keras ResNet h5 in the old \(res2a_branch2a\) naming lacks "
                                           r"layer res4f_branch2c \(the first missing; visloc's layer3\.5\.conv3"):
        ri.keras_resnet_state_dict(write_h5(tmp_path / "short.h5", layers))
    deeper = [*keras_layers(torch_sd, "new", "keras2")[0], ("conv4_block7_1_conv", layers[2][1])]
    with pytest.raises(WeightsError, match=r"new \(conv2_block1_1_conv\) naming has layer conv4_block7_1_conv, which "
                                           r"a ResNet-50 has not"):
        ri.keras_resnet_state_dict(write_h5(tmp_path / "deeper.h5", deeper))
    bad = [(name, ws[:3]) if name == "bn_conv1" else (name, ws) for name, ws in layers]
    with pytest.raises(WeightsError, match=r"bad\.h5: layer bn_conv1 holds 3 weights"):
        ri.keras_resnet_state_dict(write_h5(tmp_path / "bad.h5", bad))
    with pytest.raises(WeightsError, match=r"other\.h5: not a Keras ResNet weights file: its layer names "
                                           r"\(activation_0, dense_1\.\.\.\)"):
        ri.keras_resnet_state_dict(write_h5(tmp_path / "other.h5", [("dense_1", [])], fillers=1))
    with h5py.File(tmp_path / "bare.h5", "w"):
        pass
    with pytest.raises(WeightsError, match=r"bare\.h5: HDF5 without a 'layer_names' attribute"):
        ri.keras_resnet_state_dict(tmp_path / "bare.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsError, match=r"junk\.h5: cannot read as HDF5"):
        ri.keras_resnet_state_dict(tmp_path / "junk.h5")
    with pytest.raises(WeightsError, match=r"none\.h5: Keras ResNet weights not found"):
        ri.keras_resnet_state_dict(tmp_path / "none.h5")


# --- into visloc's backbone -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_delg():
    return pytest.importorskip("visloc.models.resnet_delg")


def test_load_into_the_tf_backbone_loads_the_stem(tmp_path: Path, torch_sd, resnet_delg, caplog) -> None:
    layers, biases = keras_layers(torch_sd, "old", "keras1")
    backbone = resnet_delg.ResNetBackbone(50, "tf")
    with caplog.at_level(logging.INFO, logger=ri.__name__):
        assert ri.load_imagenet_backbone(backbone, write_h5(tmp_path / "w.h5", layers)) == "keras-old"
    assert "BN eps 0.001" in caplog.text
    got = backbone.state_dict()
    assert torch.equal(got["conv1.weight"], torch_sd["conv1.weight"])  # the stem TF's reference leaves random
    assert torch.equal(got["bn1.running_var"], torch_sd["bn1.running_var"])
    assert np.array_equal(got["layer4.2.conv3.bias"].numpy(), biases["layer4.2.conv3"])


def test_load_into_the_torchvision_backbone(tmp_path: Path, torch_sd, resnet_delg) -> None:
    torch.save(torch_sd, tmp_path / "resnet50-0676ba61.pth")
    tv = resnet_delg.ResNetBackbone(50, "torchvision")
    assert ri.load_imagenet_backbone(tv, tmp_path / "resnet50-0676ba61.pth") == "torchvision"
    got = tv.state_dict()
    assert all(torch.equal(got[k], torch_sd[k]) for k in got)
    layers, biases = keras_layers(torch_sd, "new", "keras2")
    assert ri.load_imagenet_backbone(tv, write_h5(tmp_path / "w.h5", layers)) == "keras-new"
    folded = torch_sd["bn1.running_mean"] - torch.from_numpy(biases["conv1"])
    assert torch.allclose(tv.state_dict()["bn1.running_mean"], folded)
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth: torchvision ResNet weights fit the torchvision "
                                           r"layout only .* use a torchvision-layout preset \(delg-r50-tv\)"):
        ri.load_imagenet_backbone(resnet_delg.ResNetBackbone(50, "tf"), tmp_path / "resnet50-0676ba61.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(WeightsError, match=r"resnet18\.pth: torchvision ResNet weights lack layer1\.0\.conv3\.weight"):
        ri.load_imagenet_backbone(tv, tmp_path / "resnet18.pth")


def test_load_into_a_delg(tmp_path: Path, torch_sd) -> None:
    delg = pytest.importorskip("visloc.models.delg")
    model = delg.DELG(delg.resolve_preset("delg-r50"))
    layers, _ = keras_layers(torch_sd, "new", "keras2")
    assert ri.load_imagenet_backbone(model, write_h5(tmp_path / "w.h5", layers)) == "keras-new"
    assert torch.equal(model.state_dict()["backbone.layer3.5.conv3.weight"], torch_sd["layer3.5.conv3.weight"])
    with pytest.raises(TypeError, match="is not a DELG or a ResNetBackbone"):
        ri.load_imagenet_backbone(torch.nn.Linear(2, 2), tmp_path / "w.h5")


def test_the_delg_recipe_starts_from_keras_weights(tmp_path: Path, torch_sd) -> None:
    """``model.imagenet`` with the old-scheme h5 into a tf-layout ResNet-50: stem and blocks loaded, biases kept,
    and DELF's ``(x - 128) / 128`` input (what its TF training feeds its Keras init); a .pth there is refused."""
    layers, biases = keras_layers(torch_sd, "old", "keras2")
    h5 = write_h5(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", layers)
    recipe = DELGRecipe()
    arch = {"depth": 50, "layout": "tf", "attention_dim": 16, "local_dim": 8, "global_dim": 32}
    conf = recipe.check(apply_overrides(recipe.tiny_conf(tmp_path / "run"), {"model": {"arch": arch,
                                                                                       "imagenet": str(h5)}}))
    assert conf.model.preprocessing == DELG_RGB
    module = recipe.module(conf, tmp_path / "run")
    backbone = module.model.backbone
    assert torch.equal(backbone.conv1.weight, torch_sd["conv1.weight"])  # the stem too (DELF's TF code skips it)
    assert torch.equal(backbone.layer4[2].bn3.running_var, torch_sd["layer4.2.bn3.running_var"])
    assert np.array_equal(backbone.layer2[0].downsample[0].bias.detach().numpy(), biases["layer2.0.downsample.0"])
    pth = tmp_path / "resnet50.pth"
    torch.save(torch_sd, pth)
    with pytest.raises(ConfError, match=r"^model.imagenet: a torchvision .pth fits the torchvision layout, the model "
                                        r"has layout tf \(give Keras's resnet50 ..._notop.h5 for it\)$"):
        recipe.check(apply_overrides(conf, {"model": {"imagenet": str(pth)}}))
