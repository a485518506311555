from __future__ import annotations

import io
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from visloc.models.heads import GeM, L2Norm, NetVLAD, PCAWhitening


def _hard_vlad(desc: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Textbook VLAD: nearest-centroid assignment, residual sums, intra-normalisation, global L2."""
    nearest = ((desc[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    vlad = np.zeros_like(centroids)
    for k in range(len(centroids)):
        vlad[k] = (desc[nearest == k] - centroids[k]).sum(0)
    vlad /= np.maximum(np.linalg.norm(vlad, axis=1, keepdims=True), 1e-12)
    vlad = vlad.ravel()
    return vlad / np.linalg.norm(vlad)


def _onnx_session(model: torch.nn.Module, example: torch.Tensor, dynamic_axes: dict) -> ort.InferenceSession:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": dynamic_axes, "y": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- NetVLAD


def test_netvlad_shape_and_norm():
    torch.manual_seed(0)
    model = NetVLAD(num_clusters=8, dim=16).eval()
    out = model(torch.randn(3, 16, 5, 7))
    assert out.shape == (3, 8 * 16) == (3, model.out_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_netvlad_rejects_wrong_shape():
    model = NetVLAD(num_clusters=4, dim=8)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 9, 4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.randn(2, 8, 4, 4), mask=torch.ones(2, 4, 5))


def test_netvlad_permutation_invariant_over_positions():
    torch.manual_seed(0)
    model = NetVLAD(num_clusters=8, dim=16, alpha=10.0).eval()
    x = torch.randn(2, 16, 4, 6)
    perm = torch.randperm(24)
    x_perm = x.flatten(2)[:, :, perm].reshape(2, 16, 3, 8)  # other positions and another H x W
    torch.testing.assert_close(model(x), model(x_perm), atol=1e-5, rtol=1e-5)


def test_netvlad_mask_drops_positions():
    torch.manual_seed(0)
    model = NetVLAD(num_clusters=4, dim=8, alpha=10.0).eval()
    x = torch.randn(1, 8, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    torch.testing.assert_close(model(x, mask=mask), model(x[:, :, :2]), atol=1e-5, rtol=1e-5)


def test_netvlad_matches_hard_vlad():
    rng = np.random.default_rng(0)
    num_clusters, dim, n = 6, 16, 200
    centroids = rng.normal(size=(num_clusters, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    # descriptors scattered around the centroids, then L2-normalised as NetVLAD's input
    desc = centroids[rng.integers(num_clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    expected = _hard_vlad(desc, centroids)

    model = NetVLAD(num_clusters=num_clusters, dim=dim).eval()
    model.set_centroids(torch.from_numpy(centroids).float(), alpha=1000.0)
    x = torch.from_numpy(desc.T.reshape(1, dim, 10, 20)).float()
    with torch.no_grad():
        out = model(x)[0].double().numpy()
    assert float(out @ expected) > 0.999

    # a soft assignment is not VLAD: the approximation comes from the large alpha
    model.set_centroids(torch.from_numpy(centroids).float(), alpha=0.1)
    with torch.no_grad():
        assert float(model(x)[0].double().numpy() @ expected) < 0.99


def test_netvlad_bn_membership_differs_and_is_finite():
    torch.manual_seed(0)
    plain = NetVLAD(num_clusters=8, dim=16, alpha=5.0)
    with_bn = NetVLAD(num_clusters=8, dim=16, alpha=5.0, bn_membership=True)
    with_bn.load_state_dict(plain.state_dict(), strict=False)
    assert with_bn.bn is not None
    x = torch.randn(4, 16, 5, 5)
    # training mode: the logits are normalised with the batch statistics
    out_plain, out_bn = plain.train()(x), with_bn.train()(x)
    assert torch.isfinite(out_bn).all()
    assert (out_plain - out_bn).abs().max() > 1e-2
    torch.testing.assert_close(out_bn.norm(dim=1), torch.ones(4))
    # eval mode: the running statistics (updated above) are used
    out_eval = with_bn.eval()(x)
    assert torch.isfinite(out_eval).all()
    assert (out_eval - plain.eval()(x)).abs().max() > 1e-2


def test_netvlad_init_from_descriptors_deterministic():
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(2000, 16)).astype(np.float32)
    a = NetVLAD(num_clusters=8, dim=16).init_from_descriptors(desc, seed=3)
    b = NetVLAD(num_clusters=8, dim=16).init_from_descriptors(torch.from_numpy(desc), seed=3)
    torch.testing.assert_close(a.centroids, b.centroids, atol=1e-6, rtol=0)
    assert a.alpha == pytest.approx(b.alpha, rel=1e-6)
    assert a.alpha > 0
    torch.testing.assert_close(a.conv.weight[:, :, 0, 0], 2 * a.alpha * a.centroids)
    torch.testing.assert_close(a.conv.bias, -a.alpha * a.centroids.pow(2).sum(1))
    c = NetVLAD(num_clusters=8, dim=16).init_from_descriptors(desc, seed=4)
    assert not torch.allclose(a.centroids, c.centroids)


def test_netvlad_init_alpha_gives_one_percent_runner_up():
    rng = np.random.default_rng(1)
    desc = rng.normal(size=(3000, 8)).astype(np.float32)
    model = NetVLAD(num_clusters=4, dim=8).init_from_descriptors(desc, seed=0)
    x = F.normalize(torch.from_numpy(desc), dim=1)
    d_sq = torch.cdist(x, model.centroids).pow(2).sort(dim=1).values
    assert model.alpha == pytest.approx(-math.log(0.01) / (d_sq[:, 1] - d_sq[:, 0]).mean().item(), rel=1e-3)


def test_netvlad_init_rejects_too_few_descriptors():
    with pytest.raises(ValueError, match="at least 8"):
        NetVLAD(num_clusters=8, dim=4).init_from_descriptors(np.zeros((5, 4), np.float32))


# ---------------------------------------------------------------- GeM / L2Norm


def test_gem_p1_is_average_pooling():
    x = torch.arange(1.0, 25.0).reshape(2, 3, 2, 2)
    out = GeM(p=1.0)(x)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, x.mean(dim=(2, 3)))


def test_gem_large_p_tends_to_max_pooling():
    values = torch.tensor([0.1, 0.2, 0.5, 1.0])
    x = values.reshape(1, 1, 2, 2)
    gaps = []
    for p in (3.0, 10.0, 50.0):
        out = GeM(p=p, learnable=False)(x).item()
        exact = float(np.mean(values.double().numpy() ** p) ** (1 / p))
        assert out == pytest.approx(exact, rel=1e-5)
        gaps.append(1.0 - out)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1.0 - 0.25 ** (1 / 50) + 1e-6  # = max * (1 - N^(-1/p)) with one maximal value


def test_gem_clamps_and_learnable_flag():
    x = -torch.ones(1, 2, 3, 3)
    torch.testing.assert_close(GeM(eps=1e-3)(x), torch.full((1, 2), 1e-3))
    assert [n for n, _ in GeM(learnable=True).named_parameters()] == ["p"]
    fixed = GeM(learnable=False)
    assert list(fixed.parameters()) == [] and "p" in fixed.state_dict()
    with pytest.raises(ValueError, match="p must be positive"):
        GeM(p=0.0)


def test_l2norm():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(L2Norm()(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# ---------------------------------------------------------------- PCA whitening


def _correlated_gaussian(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian data with standard deviations ``8, 4, 2, 1, 1, ...`` along the columns of a random rotation."""
    rng = np.random.default_rng(seed)
    scales = np.maximum(8.0 / 2.0 ** np.arange(dim), 1.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    x = (rng.normal(size=(n, dim)) * scales) @ rotation.T + rng.normal(size=dim)
    return torch.from_numpy(x).float(), torch.from_numpy(rotation).float()


def test_pca_whitening_gives_identity_covariance():
    x, _ = _correlated_gaussian(20000, 12)
    white = PCAWhitening(12, 12).fit(x)
    z = white.project(x).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-4, rtol=0)
    cov = torch.cov(z.T, correction=0)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    out = white(x[:5])
    assert out.shape == (5, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_pca_reduction_keeps_top_variance_directions():
    x, rotation = _correlated_gaussian(20000, 10)
    pca = PCAWhitening(10, 3).fit(x, whiten=False)
    assert pca.projection.shape == (3, 10)
    # the data's largest-variance axes are the first columns of ``rotation`` (scales decrease)
    overlap = (pca.projection @ rotation).abs()
    torch.testing.assert_close(overlap[:, :3], torch.eye(3), atol=0.01, rtol=0)
    variances = pca.project(x).var(dim=0)
    torch.testing.assert_close(variances, torch.tensor([8.0, 4.0, 2.0]) ** 2, rtol=0.05, atol=0)


def test_pca_whitening_state_dict_round_trip():
    x, _ = _correlated_gaussian(500, 6)
    white = PCAWhitening(6, 4).fit(x)
    assert set(white.state_dict()) == {"mean", "projection"}
    fresh = PCAWhitening(6, 4)
    fresh.load_state_dict(white.state_dict())
    torch.testing.assert_close(fresh(x[:7]), white(x[:7]))
    assert white.projection.dtype == torch.float32


def test_pca_whitening_rejects_bad_shapes():
    with pytest.raises(ValueError, match="dim_out"):
        PCAWhitening(4, 5)
    with pytest.raises(ValueError, match="x must be"):
        PCAWhitening(4, 2).fit(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="x must be"):
        PCAWhitening(4, 2)(torch.zeros(10, 3))


# ---------------------------------------------------------------- ONNX export


def _check_onnx(model: torch.nn.Module, inputs: list[torch.Tensor], dynamic_axes: dict) -> None:
    model.eval()
    session = _onnx_session(model, inputs[0], dynamic_axes)
    for x in inputs:
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


#: torch >= 2.9 flags the TorchScript exporter (``dynamo=False``); the dynamo one needs onnxscript
_LEGACY_EXPORT = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@_LEGACY_EXPORT
@pytest.mark.parametrize("bn_membership", [False, True])
def test_netvlad_onnx_parity(bn_membership):
    torch.manual_seed(0)
    model = NetVLAD(num_clusters=8, dim=16, alpha=10.0, bn_membership=bn_membership)
    if model.bn is not None:
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    inputs = [torch.randn(2, 16, 6, 8), torch.randn(3, 16, 9, 5)]
    _check_onnx(model, inputs, {0: "batch", 2: "height", 3: "width"})


@_LEGACY_EXPORT
def test_gem_onnx_parity():
    model = torch.nn.Sequential(GeM(p=3.0), L2Norm())
    inputs = [torch.rand(2, 32, 6, 8), torch.rand(3, 32, 9, 5)]
    _check_onnx(model, inputs, {0: "batch", 2: "height", 3: "width"})


@_LEGACY_EXPORT
def test_pca_whitening_onnx_parity():
    x, _ = _correlated_gaussian(1000, 16)
    model = PCAWhitening(16, 8).fit(x)
    _check_onnx(model, [x[:2], x[10:15]], {0: "batch"})
