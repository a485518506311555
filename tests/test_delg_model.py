"""DELF / DELG network: layouts, receptive field, stop-gradients, ArcFace (models.delg, models.resnet_delg)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from visloc.conf import ConfError
from visloc.models.delg import DELG, PRESETS, DELGConf, attention_pool
from visloc.models.heads.arcface import ArcFaceHead
from visloc.models.resnet_delg import ResNetBackbone, receptive_field, tf_same_pad


def test_tf_same_padding_matches_tensorflow_rule():
    # TF "same": total = max((ceil(n / s) - 1) s + k - n, 0), the extra pixel after
    assert tf_same_pad(224, 7, 2) == (2, 3)
    assert tf_same_pad(321, 7, 2) == (3, 3)
    assert tf_same_pad(10, 1, 2) == (0, 0)
    assert tf_same_pad(5, 3, 1) == (1, 1)


def test_receptive_field_constants():
    assert receptive_field(50, "tf") == receptive_field(50, "tf", side=512)
    tf, tv = receptive_field(50, "tf"), receptive_field(50, "torchvision")
    assert (tf.size, tf.stride, tf.offset) == (291, 32, 3.0)  # DELF's rf = 291, stride 16 * 2
    assert (tv.size, tv.stride, tv.offset) == (267, 32, 0.0)
    assert receptive_field(50, "tf", side=321).offset == 2.0
    assert receptive_field(101, "tf").size == 291 + 17 * 32  # 17 more 3x3 convs at stride 16


@pytest.mark.parametrize("layout, side", [("torchvision", 512), ("tf", 512), ("tf", 511)])
def test_receptive_field_is_the_gradient_support(layout, side):
    """The input pixels that reach a middle block3 cell span ``size`` pixels centred at ``offset + 32 i``."""
    torch.manual_seed(0)
    net = ResNetBackbone(50, layout).eval()
    for p in net.parameters():  # positive weights and input: every ReLU passes, the support is the whole field
        p.data.abs_()
    pool = net.maxpool  # a max-pool passes gradient to one pixel per window; an average pool of its geometry to all
    net.maxpool = torch.nn.AvgPool2d(3, 2, padding=pool.padding)
    x = torch.ones(1, 3, side, side, requires_grad=True)
    block3 = net.conv4(x)[:, :, ::2, ::2]
    i = block3.shape[-1] // 2
    block3[0, :, i, i].sum().backward()
    assert x.grad is not None
    cols = torch.nonzero(x.grad[0].abs().sum(dim=(0, 1)) > 0).flatten()
    rf = receptive_field(50, layout, side=side)
    lo, hi = int(cols.min()), int(cols.max())
    assert hi - lo + 1 == rf.size
    assert (lo + hi) / 2 == pytest.approx(rf.centre(torch.tensor(i)).item())


def test_torchvision_layout_is_torchvision_resnet50():
    tv = torchvision.models.resnet50(weights=None).eval()
    net = ResNetBackbone(50, "torchvision").eval()
    net.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = torch.nn.Sequential(*list(tv.children())[:-2])(x)
        assert torch.equal(net(x), ref)


def test_tf_layout_strides_biases_eps():
    net = ResNetBackbone(50, "tf")
    for layer in (net.layer2, net.layer3, net.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (2, 2)
    assert net.conv1.bias is not None and net.layer3[2].conv2.bias is not None
    assert net.bn1.eps == 1e-3 and net.layer4[0].bn3.eps == 1e-3
    assert net.maxpool.padding == 0
    out = net.conv4(torch.zeros(1, 3, 321, 321))
    assert out.shape[-2:] == (20, 20)  # 321 -> 161 (same) -> 80 (valid pool) -> 40 -> 20


def test_tf_layout_needs_bottlenecks():
    with pytest.raises(ConfError, match="depth 50 or 101"):
        DELGConf(depth=18, layout="tf")
    with pytest.raises(ConfError, match="depth"):
        DELGConf(depth=42)


def test_outputs_and_delf_preset():
    net = DELG(PRESETS["delg-r18"]).eval()
    out = net(torch.randn(2, 3, 128, 96))
    assert out.block3.shape == (2, 256, 4, 3) and out.local is not None and out.local.shape == (2, 128, 4, 3)
    assert out.attention is not None and bool((out.attention >= 0).all())
    assert out.global_descriptor is not None and out.global_descriptor.shape == (2, 512)
    assert torch.allclose(out.global_descriptor.norm(dim=1), torch.ones(2))
    delf = DELG(PRESETS["delf-r50"]).eval()
    assert delf.autoencoder is None and delf.embedding is None and delf.local_dim == 1024
    o = delf(torch.randn(1, 3, 64, 64))
    assert o.local is o.block3 and o.global_descriptor is None
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.randn(1, 1, 64, 64))


def test_stop_gradients_follow_delg():
    torch.manual_seed(0)
    net = DELG(PRESETS["delg-r18"]).train()
    out = net(torch.randn(2, 3, 96, 96))
    assert out.attention is not None and out.reconstruction is not None and out.global_prelogits is not None
    (out.attention.sum() + out.reconstruction.square().mean()).backward()
    assert all(p.grad is None for p in net.backbone.parameters())  # local losses never reach the backbone
    assert net.attention.conv1.weight.grad is not None and net.autoencoder is not None
    assert net.autoencoder.conv1.weight.grad is not None  # attention reads the reconstruction
    out = net(torch.randn(2, 3, 96, 96))
    assert out.global_prelogits is not None
    out.global_prelogits.sum().backward()
    assert net.backbone.layer1[0].conv1.weight.grad is not None


def test_attention_pool_exact():
    block3 = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])  # [1, 2, 1, 2]: cells (3, 4) and (0, 2)
    attention = torch.tensor([[[[2.0, 1.0]]]])
    # l2n: (0.6, 0.8) and (0, 1); weighted (1.2, 1.6) and (0, 1); mean over the 2 cells
    assert torch.allclose(attention_pool(block3, attention), torch.tensor([[0.6, 1.3]]))


def test_arcface_exact_values():
    head = ArcFaceHead(2, 3, margin=0.1, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    theta = 0.5
    x = torch.tensor([[math.cos(theta), math.sin(theta)], [-1.0, 1e-3]])
    plain = head(x)
    assert torch.allclose(plain[0], 10 * torch.tensor([math.cos(theta), math.sin(theta), -math.cos(theta)]))
    logits = head(x, torch.tensor([0, 0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.1), abs=1e-5)
    assert torch.equal(logits[0, 1:], plain[0, 1:])
    # theta ~ pi > pi - m: DELG drops the margin
    assert logits[1, 0].item() == pytest.approx(plain[1, 0].item(), abs=1e-5)
    assert head.scale.requires_grad is False and math.isclose(ArcFaceHead(2048, 5).scale.item(), 45.2548, rel_tol=1e-5)


def test_arcface_sub_centers_take_the_closest():
    head = ArcFaceHead(2, 2, margin=0.0, scale=1.0, sub_centers=2)
    with torch.no_grad():  # class 0: (1, 0) and (0, 1); class 1: (-1, 0) and (0, -1)
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    assert torch.allclose(head(torch.tensor([[0.0, 3.0]])), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="labels"):
        ArcFaceHead(2, 2)(torch.randn(1, 2), torch.tensor([5]))
