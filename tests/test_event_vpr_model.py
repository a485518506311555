"""Event-VPR: shapes and norms, the ImageNet first-conv adaptation, user files, PCA whitening, ONNX, windows.

Tiny sizes (a 40x30 sensor, input 64, 2 bins) keep each test to seconds; the defaults are the issue's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision

from visloc.conf import ConfError
from visloc.events import EventStream, count_windows
from visloc.events.est import EST
from visloc.events.vpr import EventVPRWindows, build_event_vpr
from visloc.models.backbones import adapt_rgb_filters
from visloc.models.event_vpr import EventVPR, EventVPRConf, centre_crop_resize
from visloc.pipelines.export import export_registered
from visloc.registry import REPRESENTATIONS
from visloc.weights.checkpoint import save_model
from visloc.weights.converters.resnet_imagenet import load_imagenet_backbone
from visloc.weights.load import WeightsError

TINY = EventVPRConf(representation="est", bins=2, input_size=64)  # C = 4, D = 32 * 512
SIZE = (40, 30)  # (W, H)


@pytest.fixture(scope="module")
def net() -> EventVPR:
    torch.manual_seed(0)
    return EventVPR(TINY).eval()


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """A torchvision resnet34 state dict whose conv1 filters are R = 1, G = 2, B = 6 (mean 3) everywhere."""
    torch.manual_seed(0)
    sd = torchvision.models.resnet34(weights=None).state_dict()
    sd["conv1.weight"] = torch.cat([torch.full((64, 1, 7, 7), v) for v in (1.0, 2.0, 6.0)], dim=1)
    path = tmp_path_factory.mktemp("imagenet") / "resnet34-imagenet.pth"
    torch.save(sd, path)
    return path, sd


def _stream(n: int = 2000, seed: int = 0) -> EventStream:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 100_000, n)).astype(np.int64)
    x, y = rng.integers(0, SIZE[0], n).astype(np.int16), rng.integers(0, SIZE[1], n).astype(np.int16)
    return EventStream(t, x, y, rng.choice(np.array([-1, 1], np.int8), n), SIZE, origin_us=1_600_000_000_000_000)


def test_defaults_are_the_issues():
    conf = EventVPRConf()
    assert (conf.representation, conf.bins, conf.channels, conf.input_size) == ("est", 9, 18, 224)
    assert (conf.num_clusters, conf.whiten_dim, conf.out_dim) == (32, 0, 16384)
    assert EventVPRConf(representation="voxel-grid", bins=5).channels == 5
    with pytest.raises(ConfError, match="bins: est needs >= 2"):
        EventVPRConf(bins=1)
    with pytest.raises(ConfError, match="whiten_dim"):
        EventVPRConf(num_clusters=1, whiten_dim=513)


def test_output_shape_and_l2_norm(net):
    x = torch.rand(3, 4, SIZE[1], SIZE[0])
    with torch.no_grad():
        out = net(x)
        feats = net.features(x)
    assert out.shape == (3, 32 * 512) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    assert feats.shape == (3, 512, 2, 2)  # 64 / 32
    assert net.backbone.conv1.in_channels == 4
    with pytest.raises(ValueError, match=r"representation: expected \[B, 4, H, W\] \(est, 2 bins\), got shape"):
        net(torch.rand(1, 3, 30, 40))


def test_centre_crop_and_bilinear_resize():
    x = torch.arange(2 * 30 * 40, dtype=torch.float32).view(1, 2, 30, 40)
    same = centre_crop_resize(x, 30)  # the centred 30x30 square, columns 5..34, unchanged at scale 1
    assert torch.equal(same, x[..., :, 5:35])
    tall = centre_crop_resize(x.transpose(-1, -2), 30)  # 40 rows: rows 5..34
    assert torch.equal(tall, x.transpose(-1, -2)[..., 5:35, :])
    up = centre_crop_resize(x, 60)
    torch.testing.assert_close(up, F.interpolate(x[..., 5:35], size=(60, 60), mode="bilinear", align_corners=False))


def test_channel_adaptation_gives_the_stated_filters(resnet34_file):
    path, sd = resnet34_file
    rgb = sd["conv1.weight"]
    # (R + G + B) / C on every channel: 9 / C
    assert torch.equal(adapt_rgb_filters(rgb, 18), torch.full((64, 18, 7, 7), 0.5))
    assert torch.equal(adapt_rgb_filters(rgb, 4), torch.full((64, 4, 7, 7), 2.25))
    assert torch.equal(adapt_rgb_filters(rgb, 1), torch.full((64, 1, 7, 7), 9.0))  # gray: the sum
    with pytest.raises(ValueError, match=r"expected RGB filters \[O, 3, k, k\]"):
        adapt_rgb_filters(torch.zeros(64, 4, 7, 7), 2)
    model = build_event_vpr(TINY, imagenet=path)
    backbone = model.network.backbone
    assert torch.equal(backbone.conv1.weight, torch.full((64, 4, 7, 7), 2.25))
    assert torch.equal(backbone.layer4[2].conv2.weight, sd["layer4.2.conv2.weight"])
    assert torch.equal(backbone.bn1.running_var, sd["bn1.running_var"])


def test_imagenet_file_loads_with_weights_only(resnet34_file, monkeypatch):
    path, _ = resnet34_file
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert load_imagenet_backbone(EventVPR(TINY), path, stem="mean") == "torchvision"
    assert calls == [True]


def test_wrong_imagenet_files_give_one_line(tmp_path):
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    cases = [(r18, r"resnet18.pth: torchvision ResNet weights lack layer1\.2\.conv1\.weight \(\d+ backbone keys "
                   r"missing: another architecture or depth\?\)"),
             (text, r"notes.pth: cannot load torchvision ResNet weights: corrupt or not a torch file"),
             (tmp_path / "absent.pth", r"absent.pth: torchvision ResNet weights not found")]
    for path, message in cases:
        with pytest.raises(WeightsError, match=message) as info:
            build_event_vpr(TINY, imagenet=path)
        assert "\n" not in str(info.value)
    r34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(WeightsError, match=r"conv1.weight has shape \[64, 3, 7, 7\], the backbone's is \[64, 4, "):
        load_imagenet_backbone(EventVPR(TINY), r34)  # stem="rgb": the RGB filters do not fit 4 channels


def test_pca_whitening_when_given_exact():
    torch.manual_seed(1)
    model = EventVPR(EventVPRConf(bins=2, input_size=64, whiten_dim=2)).eval()
    assert model.whiten is not None and model.out_dim == 2
    mean = torch.zeros(32 * 512)
    mean[0] = 0.01
    projection = torch.zeros(2, 32 * 512)
    projection[0, 0], projection[1, 1] = 2.0, 0.5
    model.whiten.mean.copy_(mean)
    model.whiten.projection.copy_(projection)
    x = torch.rand(2, 4, SIZE[1], SIZE[0])
    with torch.no_grad():
        vlad = model.pool(model.features(x))
        out = model(x)
    by_hand = torch.stack([2.0 * (vlad[:, 0] - 0.01), 0.5 * vlad[:, 1]], dim=1)
    by_hand = by_hand / by_hand.norm(dim=1, keepdim=True).clamp(min=1e-12)
    assert out.shape == (2, 2)
    assert torch.equal(out, by_hand)  # every other term of the projection is an exact 0


def test_export_from_a_checkpoint_with_onnx_parity(tmp_path):
    """A windows-module checkpoint exports its network; onnxruntime (dynamic batch) agrees within 1e-4."""
    torch.manual_seed(2)
    model = build_event_vpr(TINY).eval()
    ckpt = save_model(tmp_path / "event_vpr.pt", "event-vpr", model)
    out = tmp_path / "event_vpr.onnx"
    result = export_registered("event-vpr", out, ["shape.height=30", "shape.width=40", "shape.batch=2"], weights=ckpt)
    assert max(result.max_abs_diff.values()) <= 1e-4 and len(result.max_abs_diff) == 2
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 4, 30, 40]
    assert session.get_outputs()[0].shape == ["batch", 32 * 512]
    dense = model.dense(count_windows(_stream(), 500).events(_stream()))  # the EST of 4 windows
    with torch.no_grad():
        expected = model.network(dense).numpy()
    (got,) = session.run(None, {"representation": dense.detach().numpy()})
    assert got.shape == (4, 32 * 512) and np.abs(got - expected).max() <= 1e-4


def test_windows_module_trains_the_kernel_with_the_network():
    stream = _stream()
    windows = count_windows(stream, 400, stride=300).events(stream)
    model = build_event_vpr(TINY)
    assert isinstance(model.representation, EST) and model.conf is TINY
    assert {k.split(".")[0] for k in model.state_dict()} == {"representation", "network"}
    out = model(windows)
    assert out.shape == (len(windows), 32 * 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(windows)), rtol=0, atol=1e-5)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for name, p in [*model.representation.named_parameters(), ("conv1", model.network.backbone.conv1.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = [w.t.copy() for w in windows]
    assert all(np.array_equal(w.t, b) for w, b in zip(windows, before, strict=True))


def test_windows_module_with_a_voxel_grid_and_a_mismatch():
    conf = EventVPRConf(representation="voxel-grid", bins=3, input_size=64)
    model = build_event_vpr(conf, representation=["normalization=tonic"]).eval()
    assert model.representation.conf.normalization == "tonic"
    assert {k.split(".")[0] for k in model.state_dict()} == {"network"}  # a voxel grid has no parameters
    stream = _stream()
    with torch.no_grad():
        out = model([stream, stream.slice_index(0, 700)])
    assert out.shape == (2, 32 * 512)
    with pytest.raises(ValueError, match=r"representation: est with 3 bins \(6 channels\) does not fit a network for "
                                         r"voxel-grid with 3 bins \(3 channels\)"):
        EventVPRWindows(REPRESENTATIONS.build("est", ["bins=3", "fit_steps=0"]), model.network)


def test_the_shipped_model_loads_by_default_for_evaluation_and_export():
    from visloc.export.models import EventVPRExportConf
    from visloc.export.models import build_event_vpr as build_export
    from visloc.models.event_vpr import SHIPPED
    from visloc.pipelines.evaluate_event_vpr import load_event_vpr
    from visloc.weights.checkpoint import load_model_record
    from visloc.weights.records import resolve_weights

    record = load_model_record(resolve_weights(SHIPPED), "event-vpr")  # sha256 checked against its record
    assert record.state_dict["network.pool.centroids"].dtype == torch.float16  # halve_checkpoint: < 50 MB
    model = load_event_vpr()
    assert not model.training and model.conf.input_size == 128 and model.conf.representation == "voxel-grid"
    expected = record.state_dict["network.pool.centroids"].float()
    assert torch.equal(model.network.pool.centroids, expected)
    assert torch.equal(build_export(EventVPRExportConf()).pool.centroids, expected)  # export's default too
