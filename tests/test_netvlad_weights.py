"""NetVLAD weight loaders, on files built with the official layouts and random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.signal
import torch
import torch.nn.functional as F

from visloc.models.heads import NetVLAD
from visloc.models.netvlad_vgg import NetVLADVGG16
from visloc.weights.converters.netvlad import load_matconvnet_netvlad, load_pytorch_netvlad
from visloc.weights.load import WeightsError

K, D, G = 8, 512, 32
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _mat_layers(rng: np.random.Generator, with_wpca: bool = True) -> tuple[list[dict], dict]:
    """``net.layers`` as net_class2struct writes it for vd16_pitts30k_conv5_3_vlad_preL2_intra_white."""
    empty = np.empty((0,), dtype=object)
    layers, cin, block, idx = [], 3, 1, 1
    for v in VGG_CFG:
        if v == "M":
            layers.append({"name": f"pool{block}", "type": "pool", "method": "max", "weights": empty})
            block, idx = block + 1, 1
            continue
        w = rng.standard_normal((3, 3, cin, v)).astype(np.float32) * np.float32(np.sqrt(2.0 / (9 * cin)))
        b = rng.standard_normal(v).astype(np.float32) * np.float32(0.01)
        weights = np.empty((2,), dtype=object)
        weights[0], weights[1] = w, b
        layers.append({"name": f"conv{block}_{idx}", "type": "conv", "weights": weights})
        if not (block == 5 and idx == 3):  # conv5_3 has no ReLU in the truncated model
            layers.append({"name": f"relu{block}_{idx}", "type": "relu", "leak": 0.0, "weights": empty})
        cin, idx = v, idx + 1
    arrays = {
        "assign": rng.standard_normal((1, 1, D, K)).astype(np.float32) * np.float32(5.0),
        "neg_centroids": -rng.standard_normal((D, K)).astype(np.float32) * np.float32(0.05),
        "wpca_w": rng.standard_normal((1, 1, D * K, G)).astype(np.float32) * np.float32(0.05),
        "wpca_b": rng.standard_normal(G).astype(np.float32) * np.float32(0.01),
    }
    vlad_w = np.empty((2,), dtype=object)
    vlad_w[0], vlad_w[1] = arrays["assign"], arrays["neg_centroids"]
    norm = np.array([1024, 1e-12, 1, 0.5])
    layers += [
        {"name": "preL2", "type": "normalize", "param": norm, "weights": empty},
        {"name": "vlad:core", "type": "custom", "K": K, "weights": vlad_w},
        {"name": "vlad:intranorm", "type": "normalize", "param": norm, "weights": empty},
        {"name": "postL2", "type": "custom", "weights": empty},
    ]
    if with_wpca:
        wpca_w = np.empty((2,), dtype=object)
        wpca_w[0], wpca_w[1] = arrays["wpca_w"], arrays["wpca_b"]
        layers += [
            {"name": "WPCA", "type": "conv", "pad": 0, "stride": 1, "weights": wpca_w},
            {"name": "finalL2", "type": "custom", "weights": empty},
        ]
    return layers, arrays


def _save_mat(path: Path, layers: list[dict], average_image: np.ndarray) -> Path:
    cell = np.empty((len(layers),), dtype=object)
    for i, layer in enumerate(layers):
        cell[i] = layer
    net = {"layers": cell, "meta": {"normalization": {"averageImage": average_image}}}
    scipy.io.savemat(path, {"net": net})
    return path


AVERAGE_RGB = np.array([122.7, 114.9, 101.8], dtype=np.float32)


@pytest.fixture(scope="module")
def official_mat(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    rng = np.random.default_rng(0)
    layers, arrays = _mat_layers(rng)
    average_image = np.broadcast_to(AVERAGE_RGB, (4, 4, 3)).copy()  # HxWx3, constant per channel
    path = _save_mat(tmp_path_factory.mktemp("mat") / "pitts30k_struct.mat", layers, average_image)
    return path, layers, arrays


def _reference_vlad_wpca(fmap: np.ndarray, arrays: dict) -> np.ndarray:
    """MatConvNet/netvlad_tf_open forward of preL2, vlad:core, intranorm, postL2, WPCA, finalL2 on ``[D, H, W]``."""
    x = fmap.reshape(D, -1).astype(np.float64)
    x = x / np.sqrt((x**2).sum(0, keepdims=True) + 1e-12)  # preL2 across channels
    s = x.T @ arrays["assign"].reshape(D, K)  # [N, K], no bias
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    c = arrays["neg_centroids"].astype(np.float64)  # stored negated: x + c is the residual
    v = np.einsum("nk,dnk->dk", a, x[:, :, None] + c[:, None, :])  # [D, K]
    v = v / np.sqrt((v**2).sum(0, keepdims=True) + 1e-12)  # intra-normalisation over D per cluster
    v = v.reshape(-1)  # postL2 flattens dimension-major: d * K + k
    v = v / np.sqrt((v**2).sum() + 1e-12)
    y = v @ arrays["wpca_w"].reshape(D * K, G) + arrays["wpca_b"]
    return y / np.sqrt((y**2).sum() + 1e-12)


def test_matconvnet_vlad_wpca_matches_numpy_reference(official_mat):
    path, _, arrays = official_mat
    model = load_matconvnet_netvlad(path)
    assert model.pool.num_clusters == K and model.out_dim == G
    fmap = np.random.default_rng(1).standard_normal((D, 5, 6)).astype(np.float32)
    with torch.no_grad():
        got = model.aggregate(torch.from_numpy(fmap)[None])[0].numpy()
    np.testing.assert_allclose(got, _reference_vlad_wpca(fmap, arrays), atol=1e-4, rtol=0)


def test_matconvnet_first_conv_is_correlation_of_hwio_filters(official_mat):
    path, layers, _ = official_mat
    model = load_matconvnet_netvlad(path)
    image = np.random.default_rng(2).random((3, 10, 9)).astype(np.float32)
    with torch.no_grad():
        x = model.preprocess(torch.from_numpy(image)[None])
        got = model.encoder[0](x)[0].numpy()
    x_ref = image * 255.0 - AVERAGE_RGB[:, None, None]
    np.testing.assert_allclose(x.numpy()[0], x_ref, atol=1e-3)
    w, b = layers[0]["weights"]  # 3 x 3 x 3 x 64, HWIO
    for o in (0, 17, 63):
        ref = sum(scipy.signal.correlate2d(x_ref[c], w[:, :, c, o], mode="same") for c in range(3)) + b[o]
        np.testing.assert_allclose(got[o], ref, rtol=1e-4, atol=1e-2)
    flipped = sum(scipy.signal.convolve2d(x_ref[c], w[:, :, c, 0], mode="same") for c in range(3)) + b[0]
    assert np.abs(got[0] - flipped).max() > 1.0  # a flip (or HW swap) would be caught


def test_matconvnet_all_conv_layers_and_full_forward(official_mat):
    path, layers, _ = official_mat
    model = load_matconvnet_netvlad(path)
    convs = [ly for ly in layers if ly["type"] == "conv" and ly["name"] != "WPCA"]
    torch_convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(torch_convs) == 13
    for ly, conv in zip(convs, torch_convs, strict=True):
        np.testing.assert_array_equal(conv.weight.detach().numpy(), ly["weights"][0].transpose(3, 2, 0, 1))
    assert not isinstance(model.encoder[-1], (torch.nn.ReLU, torch.nn.MaxPool2d))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, G) and torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_matconvnet_without_wpca_and_flat_average_image(tmp_path):
    layers, _ = _mat_layers(np.random.default_rng(3), with_wpca=False)
    path = _save_mat(tmp_path / "nowpca.mat", layers, AVERAGE_RGB)
    model = load_matconvnet_netvlad(path)
    assert model.whiten is None and model.out_dim == K * D
    torch.testing.assert_close(model.input_mean, torch.from_numpy(AVERAGE_RGB))


def _nanne_state_dict(rng: np.random.Generator, vladv2: bool, wpca: bool) -> dict[str, torch.Tensor]:
    ref = NetVLADVGG16(num_clusters=K, whiten_dim=None)
    sd = {f"encoder.{k}": v for k, v in ref.encoder.state_dict().items()}
    sd["pool.conv.weight"] = torch.from_numpy(rng.standard_normal((K, D, 1, 1)).astype(np.float32))
    if vladv2:
        sd["pool.conv.bias"] = torch.from_numpy(rng.standard_normal(K).astype(np.float32))
    sd["pool.centroids"] = torch.from_numpy(rng.random((K, D)).astype(np.float32))
    if wpca:
        sd["WPCA.0.weight"] = torch.from_numpy(rng.standard_normal((G, K * D, 1, 1)).astype(np.float32))
        sd["WPCA.0.bias"] = torch.from_numpy(rng.standard_normal(G).astype(np.float32))
    return sd


def _reference_netvlad(fmap: np.ndarray, sd: dict[str, torch.Tensor]) -> np.ndarray:
    """pytorch-NetVlad's NetVLAD forward in numpy on ``[D, H, W]``: cluster-major output."""
    x = fmap.reshape(D, -1).astype(np.float64)
    x = x / np.linalg.norm(x, axis=0, keepdims=True)
    s = sd["pool.conv.weight"].numpy().reshape(K, D) @ x
    if "pool.conv.bias" in sd:
        s = s + sd["pool.conv.bias"].numpy()[:, None]
    a = np.exp(s - s.max(0, keepdims=True))
    a /= a.sum(0, keepdims=True)  # [K, N]
    c = sd["pool.centroids"].numpy().astype(np.float64)
    v = np.stack([(a[k][None] * (x - c[k][:, None])).sum(1) for k in range(K)])  # [K, D]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.reshape(-1)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("vladv2", [False, True])
def test_pytorch_netvlad_matches_numpy_reference(tmp_path, vladv2):
    sd = _nanne_state_dict(np.random.default_rng(4), vladv2=vladv2, wpca=False)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "best_score": 0.9, "state_dict": sd}, path)
    model = load_pytorch_netvlad(path)
    assert model.whiten is None and model.pool.num_clusters == K
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, sd[f"encoder.{key}"], rtol=0, atol=0)
    fmap = np.random.default_rng(5).standard_normal((D, 4, 4)).astype(np.float32)
    with torch.no_grad():
        got = model.aggregate(torch.from_numpy(fmap)[None])[0].numpy()
    np.testing.assert_allclose(got, _reference_netvlad(fmap, sd), atol=1e-4, rtol=0)
    image = torch.rand(1, 3, 64, 64)
    expected = (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    torch.testing.assert_close(model.preprocess(image), expected)


def test_pytorch_netvlad_with_wpca_and_dataparallel_keys(tmp_path):
    sd = _nanne_state_dict(np.random.default_rng(6), vladv2=False, wpca=True)
    sd = {k.replace("encoder.", "encoder.module.", 1): v for k, v in sd.items()}
    path = tmp_path / "wpca.pth.tar"
    torch.save({"state_dict": sd}, path)
    model = load_pytorch_netvlad(path)
    assert model.out_dim == G
    fmap = torch.randn(1, D, 3, 3)
    with torch.no_grad():
        vlad = model.pool(fmap)
        expected = F.normalize(vlad @ sd["WPCA.0.weight"].flatten(1).T + sd["WPCA.0.bias"], dim=1)
        torch.testing.assert_close(model.aggregate(fmap), expected)


def test_load_assignment_is_independent_of_centroids():
    head = NetVLAD(num_clusters=4, dim=6)
    w, c = torch.randn(4, 6), torch.randn(4, 6)
    head.load_assignment(w, None, c)
    torch.testing.assert_close(head.conv.weight[:, :, 0, 0], w)
    torch.testing.assert_close(head.conv.bias, torch.zeros(4))
    torch.testing.assert_close(head.centroids.data, c)
    with pytest.raises(ValueError, match="bias"):
        head.load_assignment(w, torch.zeros(3), c)
    with pytest.raises(ValueError, match="centroids"):
        head.load_assignment(w, None, c.T)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_matconvnet_netvlad, load_pytorch_netvlad])
def test_missing_and_unreadable_files(tmp_path, loader):
    with pytest.raises(WeightsError, match="not found"):
        loader(tmp_path / "nope.mat")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a weights file at all" * 10)
    with pytest.raises(WeightsError, match="junk.bin"):
        loader(junk)


def test_matconvnet_structure_errors(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.zeros(3)})
    with pytest.raises(WeightsError, match="struct 'net'"):
        load_matconvnet_netvlad(tmp_path / "other.mat")
    rng = np.random.default_rng(7)
    layers, _ = _mat_layers(rng)
    no_vlad = [ly for ly in layers if ly["name"] != "vlad:core"]
    with pytest.raises(WeightsError, match="vlad:core"):
        load_matconvnet_netvlad(_save_mat(tmp_path / "novlad.mat", no_vlad, AVERAGE_RGB))
    bad = [dict(ly) for ly in layers]
    w = np.empty((2,), dtype=object)
    w[0], w[1] = np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32)
    bad[0]["weights"] = w
    with pytest.raises(WeightsError, match=r"badconv.mat: layer 'conv1_1' filters has shape"):
        load_matconvnet_netvlad(_save_mat(tmp_path / "badconv.mat", bad, AVERAGE_RGB))
    few = [ly for ly in layers if ly["name"] != "conv5_3"]
    with pytest.raises(WeightsError, match="13 VGG16 conv layers"):
        load_matconvnet_netvlad(_save_mat(tmp_path / "few.mat", few, AVERAGE_RGB))
    with pytest.raises(WeightsError, match="averageImage"):
        load_matconvnet_netvlad(_save_mat(tmp_path / "avg.mat", layers, np.zeros((2, 2), np.float32)))


def test_pytorch_checkpoint_errors(tmp_path):
    sd = _nanne_state_dict(np.random.default_rng(8), vladv2=False, wpca=False)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth: expected a pytorch-NetVlad checkpoint"):
        load_pytorch_netvlad(tmp_path / "list.pth")
    missing = {k: v for k, v in sd.items() if k != "encoder.28.bias"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="'encoder.28.bias' missing"):
        load_pytorch_netvlad(tmp_path / "missing.pth")
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != "pool.centroids"}}, tmp_path / "noc.pth")
    with pytest.raises(WeightsError, match="pool.centroids"):
        load_pytorch_netvlad(tmp_path / "noc.pth")
    wrong = dict(sd, **{"pool.conv.weight": torch.zeros(K, D + 1, 1, 1)})
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=r"wrong.pth: 'pool.conv.weight' has shape"):
        load_pytorch_netvlad(tmp_path / "wrong.pth")
