"""HF-Net: network shapes, post-processing on constructed inputs, checkpoints, extractors, ONNX export, CLI."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from visloc.cli import app
from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.features.hfnet import HFNetExtractor, HFNetExtractorConf
from visloc.features.hfnet_onnx import CONF_KEY
from visloc.models.hfnet import (
    ONNX_OUTPUTS,
    HFNet,
    HFNetConf,
    detect_keypoints,
    logits_to_heatmap,
    sample_descriptors,
    simple_nms,
)
from visloc.pipelines.export import ExportError, export_hfnet
from visloc.types import IMAGE_GRAY
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF, load_backbone_weights, load_hfnet, save_hfnet
from visloc.weights.load import WeightsError

SMALL = HFNetConf(head_channels=32, descriptor_dim=16, num_clusters=4, global_feature_dim=8, global_dim=32)


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    """A random network of the default student's architecture, saved in visloc's checkpoint format."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hfnet") / "student.pt"
    return save_hfnet(path, HFNet(DEFAULT_STUDENT_CONF).eval())


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A small random network (fast to export)."""
    torch.manual_seed(0)
    return save_hfnet(tmp_path_factory.mktemp("hfnet_small") / "small.pt", HFNet(SMALL).eval())


@pytest.fixture(scope="module")
def student_onnx(student_ckpt, tmp_path_factory):
    """``student_ckpt`` exported with the default parity check (VGA and 200 x 328)."""
    return export_hfnet(student_ckpt, tmp_path_factory.mktemp("onnx") / "hfnet.onnx")


def _unit(x: torch.Tensor, dim: int) -> None:
    torch.testing.assert_close(x.norm(dim=dim), torch.ones_like(x.norm(dim=dim)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("conf", [SMALL, HFNetConf(head_channels=32, descriptor_dim=16, num_clusters=4,
                                                   global_feature_dim=0, global_dim=64)],
                         ids=["projection", "reduction"])
def test_forward_shapes_at_odd_cell_counts(conf):
    model = HFNet(conf).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 1, 40, 56))  # 5 x 7 cells, stride-32 map 2 x 2
    assert out["logits"].shape == (2, 65, 5, 7)
    assert out["dense_descriptors"].shape == (2, conf.descriptor_dim, 5, 7)
    assert out["global_descriptor"].shape == (2, conf.global_dim)
    _unit(out["dense_descriptors"], 1)
    _unit(out["global_descriptor"], 1)
    expected_reduction = nn.Linear if conf.global_feature_dim == 0 else nn.Identity
    assert type(model.reduction) is expected_reduction


def test_default_student_size():
    model = HFNet(DEFAULT_STUDENT_CONF)
    n = sum(p.numel() for p in model.parameters())
    assert 1.0e6 < n < 1.5e6  # about 5 MB in float32, under the 15 MB budget
    assert isinstance(model.reduction, nn.Identity)  # 32 clusters x 128 = 4096: no reduction
    assert model.backbone[6].conv[-1].num_features == 24  # stride-8 tap: 24 channels at width 0.75


@pytest.mark.parametrize("shape", [(1, 1, 30, 40), (1, 3, 32, 32), (1, 32, 32)])
def test_forward_rejects_bad_input(shape):
    with pytest.raises(ValueError, match=r"image: "):
        HFNet(SMALL)(torch.rand(shape))


def test_conf_checks():
    with pytest.raises(ValueError, match=r"descriptor_dim must be positive"):
        HFNet(HFNetConf(descriptor_dim=0))


# ---------------------------------------------------------------- post-processing on constructed inputs


def test_logits_to_heatmap_places_channels():
    logits = torch.zeros(1, 65, 3, 4)
    logits[0, 64] = 50.0  # dustbin everywhere ...
    logits[0, 64, 2, 1] = 0.0
    logits[0, 8 * 5 + 3, 2, 1] = 50.0  # ... except cell (i=2, j=1): channel 8 r + s with r=5, s=3
    heatmap = logits_to_heatmap(logits)
    assert heatmap.shape == (1, 24, 32)
    y, x = divmod(int(heatmap[0].argmax()), 32)
    assert (x, y) == (8 * 1 + 3, 8 * 2 + 5)
    assert heatmap[0, y, x] > 0.99 and heatmap.sum() < 1.01


def test_simple_nms_recovers_maxima_of_suppressed_neighbours():
    heatmap = torch.zeros(1, 40, 60)
    heatmap[0, 10, 10] = 0.9  # x: a maximum
    heatmap[0, 10, 14] = 0.8  # y: suppressed by x (4 px)
    heatmap[0, 10, 18] = 0.7  # z: only y is larger around it, and y is suppressed -> kept
    heatmap[0, 30, 30] = 0.5
    heatmap[0, 33, 27] = 0.4  # within the 9x9 window of (30, 30)
    kept = torch.nonzero(simple_nms(heatmap, 4)[0]).tolist()
    assert kept == [[10, 10], [10, 18], [30, 30]]
    assert torch.equal(simple_nms(heatmap, 0), heatmap)
    with pytest.raises(ValueError, match="radius"):
        simple_nms(heatmap, -1)


def test_simple_nms_pooling_equals_max_pool2d():
    from visloc.models.hfnet import _max_pool

    x = torch.rand(2, 37, 51)
    for r in (1, 2, 3, 4, 7):
        torch.testing.assert_close(_max_pool(x, r), F.max_pool2d(x[:, None], 2 * r + 1, 1, r)[:, 0], rtol=0, atol=0)


def test_detect_keypoints_border_threshold_topk():
    heatmap = torch.zeros(1, 32, 48)
    points = {(3, 10): 0.9, (4, 10): 0.0, (20, 4): 0.3, (20, 27): 0.6, (43, 20): 0.5, (44, 12): 0.95,
              (30, 16): 0.004, (10, 20): 0.7}
    for (x, y), v in points.items():
        heatmap[0, y, x] = v
    (kpts, scores), = detect_keypoints(heatmap, nms_radius=2, threshold=0.005, max_keypoints=None, border=4)
    # x=3 and x=44 (>= 48 - 4) are in the border, (30, 16) is under the threshold
    assert kpts.tolist() == [[10.0, 20.0], [20.0, 27.0], [43.0, 20.0], [20.0, 4.0]]
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.6, 0.5, 0.3]))
    (top2, s2), = detect_keypoints(heatmap, 2, 0.005, 2, 4)
    assert top2.tolist() == [[10.0, 20.0], [20.0, 27.0]] and s2.tolist() == pytest.approx([0.7, 0.6])
    (all_, _), = detect_keypoints(heatmap, 2, 0.005, -1, 0)
    assert len(all_) == 6  # no border: (3, 10) and (44, 12) come back
    assert kpts.dtype == torch.float32 and kpts.shape[1] == 2


def test_sample_descriptors_convention():
    h, w = 4, 6
    jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    dense = torch.stack([jj, ii, torch.full_like(jj, 10.0)])[None]  # channels: column, row, constant
    kpts = torch.tensor([[[3.5, 3.5], [8 * 2 + 3.5, 8 * 1 + 3.5], [15.5, 3.5], [7.5, 11.5], [0.0, 0.0],
                          [47.0, 31.0]]])
    desc = sample_descriptors(dense, kpts)
    _unit(desc, -1)
    cells = (desc[0, :, :2] / desc[0, :, 2:] * 10.0).tolist()  # (column, row) read back from the ratio
    expected = [[0, 0], [2, 1], [1.5, 0], [0.5, 1], [0, 0], [5, 3]]  # corners clamp to the border cells
    assert cells == [pytest.approx(e, abs=1e-5) for e in expected]
    with pytest.raises(ValueError, match="keypoints"):
        sample_descriptors(dense, kpts[0])


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(student_ckpt):
    model = load_hfnet(student_ckpt)
    assert model.conf == DEFAULT_STUDENT_CONF and not model.training
    ref = HFNet(DEFAULT_STUDENT_CONF)
    ref.load_state_dict(torch.load(student_ckpt, weights_only=True)["state_dict"])
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x)["global_descriptor"], ref.eval()(x)["global_descriptor"])


def test_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(WeightsError, match=re.escape(str(missing)) + ".*not found"):
        load_hfnet(missing)
    other = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match=re.escape(str(other)) + ".*not a visloc model checkpoint"):
        load_hfnet(other)
    mismatch = tmp_path / "mismatch.pt"
    save_hfnet(mismatch, HFNet(SMALL))
    ckpt = torch.load(mismatch, weights_only=True)
    ckpt["conf"]["descriptor_dim"] = 32
    torch.save(ckpt, mismatch)
    with pytest.raises(WeightsError, match=re.escape(str(mismatch)) + ".*does not fit its conf"):
        load_hfnet(mismatch)
    ckpt["conf"]["typo"] = 1
    torch.save(ckpt, mismatch)
    with pytest.raises(WeightsError, match=r"unknown key\(s\) \['typo'\]"):
        load_hfnet(mismatch)


def test_load_backbone_weights_sums_the_rgb_stem(tmp_path):
    import torchvision

    torch.manual_seed(1)
    imagenet = torchvision.models.mobilenet_v2(width_mult=0.75).state_dict()
    path = tmp_path / "mobilenet_v2_075.pth"
    torch.save(imagenet, path)
    model = load_backbone_weights(HFNet(SMALL), path)
    torch.testing.assert_close(model.backbone[0][0].weight, imagenet["features.0.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone[17].conv[2].weight, imagenet["features.17.conv.2.weight"])
    torch.save(torchvision.models.mobilenet_v2(width_mult=1.0).state_dict(), path)
    with pytest.raises(WeightsError, match=r"not MobileNetV2 width 0.75"):
        load_backbone_weights(HFNet(SMALL), path)


def test_missing_default_weights_is_an_error(monkeypatch, tmp_path):
    import visloc.weights.hfnet as hw

    monkeypatch.setattr(hw, "DEFAULT_WEIGHTS", tmp_path / "hfnet_default.pt")
    with pytest.raises(WeightsError, match=r"no weights given and no default student.*allow_random=true"):
        HFNetExtractor(HFNetExtractorConf())
    ex = HFNetExtractor(HFNetExtractorConf(allow_random=True))
    assert ex.descriptor_dim == 128 and ex.global_dim == 4096


# ---------------------------------------------------------------- extractor


class _PeakNet(nn.Module):
    """A stand-in network whose heatmap peaks at the image's bright pixels."""

    descriptor_dim, global_dim = 3, 2

    def forward(self, image):
        dustbin = torch.full_like(image[:, :, ::8, ::8], 10.0)
        logits = torch.cat([F.pixel_unshuffle(image * 40.0, 8), dustbin], 1)
        dense = torch.ones(image.shape[0], 3, image.shape[2] // 8, image.shape[3] // 8)
        return {"logits": logits, "dense_descriptors": F.normalize(dense, dim=1),
                "global_descriptor": F.normalize(torch.ones(image.shape[0], 2), dim=1)}


def test_padding_keeps_keypoints_in_place(student_ckpt):
    ex = HFNetExtractor(HFNetExtractorConf(weights=str(student_ckpt), remove_borders=2))
    ex.net = _PeakNet()
    image = torch.zeros(1, 1, 61, 77)  # padded to 64 x 80
    image[0, 0, 50, 70] = 1.0
    image[0, 0, 5, 9] = 0.3
    (out,) = ex(image)
    assert out.keypoints.tolist() == [[70.0, 50.0], [9.0, 5.0]] and out.image_size == (77, 61)
    # a peak in the last row is replicated into the padding, which is cropped before detection
    image[0, 0, 60, 30] = 1.0
    assert ex(image)[0].num_keypoints == 2  # (30, 60) is within remove_borders of the bottom edge
    ex_nb = HFNetExtractor(HFNetExtractorConf(weights=str(student_ckpt), remove_borders=0))
    ex_nb.net = _PeakNet()
    assert [30.0, 60.0] in ex_nb(image)[0].keypoints.tolist()


def test_extractor_outputs_and_global(student_ckpt, astronaut_320):
    ex = EXTRACTORS.build("hfnet", [f"weights={student_ckpt}", "max_num_keypoints=300"])
    feats = extract_image(ex, astronaut_320[:237, :301])
    n = feats.num_keypoints
    assert 0 < n <= 300 and feats.descriptors.shape == (n, 128) and feats.image_size == (301, 237)
    assert feats.global_descriptor.shape == (4096,)
    assert abs(float(feats.global_descriptor.norm()) - 1) < 1e-5
    kp = feats.keypoints.numpy()
    assert kp.min() >= 4 and kp[:, 0].max() < 301 - 4 and kp[:, 1].max() < 237 - 4
    assert ex.input_spec == IMAGE_GRAY and ex.max_batch is None
    caps = EXTRACTORS.capabilities("hfnet", ex.conf)
    assert caps.outputs == {"local", "global"} and caps.descriptor == "hfnet-128"
    assert caps.weights == (str(student_ckpt),)


def test_extractor_batch_pads_once_for_all_images(student_ckpt, astronaut_320):
    # B = 2 images of 301 x 237 (padded to 304 x 240 together) give the features of each alone
    ex = EXTRACTORS.build("hfnet", [f"weights={student_ckpt}", "max_num_keypoints=300"])
    crop = torch.from_numpy(np.ascontiguousarray(astronaut_320[:237, :301].transpose(2, 0, 1)))[None]
    batch = torch.cat([crop, crop.flip(-1)])
    both = ex(batch)
    for b in range(2):
        (one,) = ex(batch[b:b + 1])
        torch.testing.assert_close(both[b].keypoints, one.keypoints, atol=0, rtol=0)
        torch.testing.assert_close(both[b].descriptors, one.descriptors, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[b].global_descriptor, one.global_descriptor, atol=1e-5, rtol=0)
    assert not torch.equal(both[0].keypoints, both[1].keypoints)


# ---------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_export_parity_and_metadata(student_onnx):
    result, out = student_onnx, student_onnx.out
    assert out.is_file() and result.num_bytes == out.stat().st_size
    assert len(result.max_abs_diff) == 9  # 3 outputs x (the 64x96 example + 2 check sizes)
    assert max(result.max_abs_diff.values()) < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert '"descriptor_dim": 128' in session.get_modelmeta().custom_metadata_map[CONF_KEY]
    logits, dense, g = session.run(None, {"image": np.random.default_rng(0).random((1, 1, 72, 104), np.float32)})
    assert logits.shape == (1, 65, 9, 13) and dense.shape == (1, 128, 9, 13) and g.shape == (1, 4096)


def test_export_spec_declares_the_graph():
    spec = HFNet(SMALL).export_spec(batch=2, height=16, width=24, check_sizes=((8, 40),))
    assert spec.input_names == ("image",) and spec.output_names == ONNX_OUTPUTS and spec.opset == 17
    assert tuple(spec.example_inputs["image"].shape) == (2, 1, 16, 24)
    assert [tuple(c["image"].shape) for c in spec.check_inputs] == [(2, 1, 8, 40)]
    assert spec.dynamic_axes["logits"] == {0: "batch", 2: "cells_h", 3: "cells_w"} and spec.conf_key == CONF_KEY
    static = HFNet(SMALL).export_spec(dynamic=False)
    assert static.dynamic_axes is None and static.check_inputs[0]["image"].shape == (1, 1, 64, 96)
    assert not torch.equal(static.check_inputs[0]["image"], static.example_inputs["image"])
    with pytest.raises(ValueError, match="multiples of 8, got 200x330"):
        HFNet(SMALL).export_spec(check_sizes=((200, 330),))


def test_export_failed_check_writes_nothing(small_ckpt, tmp_path):
    out = tmp_path / "hfnet.onnx"
    with pytest.raises(ExportError, match=r"differs from torch.*nothing written"):
        export_hfnet(small_ckpt, out, atol=1e-12, check_sizes=((40, 56),))
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_extractor_equals_torch_extractor(student_ckpt, student_onnx, astronaut_320):
    onnx_path = student_onnx.out
    a = extract_image(EXTRACTORS.build("hfnet", [f"weights={student_ckpt}"]), astronaut_320[:231, :299]).numpy()
    b = extract_image(EXTRACTORS.build("hfnet-onnx", [f"onnx={onnx_path}"]), astronaut_320[:231, :299]).numpy()
    assert len(a["keypoints"]) > 100
    # a random network's scores nearly tie, so order may differ: compare by position
    order_a, order_b = np.lexsort(a["keypoints"].T), np.lexsort(b["keypoints"].T)
    np.testing.assert_array_equal(a["keypoints"][order_a], b["keypoints"][order_b])
    np.testing.assert_allclose(a["scores"][order_a], b["scores"][order_b], atol=1e-6)
    np.testing.assert_allclose(a["descriptors"][order_a], b["descriptors"][order_b], atol=1e-5)
    np.testing.assert_allclose(a["global_descriptor"], b["global_descriptor"], atol=1e-5)


def test_onnx_extractor_rejects_other_models(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match=r"cannot load the HF-Net ONNX model"):
        EXTRACTORS.build("hfnet-onnx", [f"onnx={path}"])


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_export(small_ckpt, tmp_path, monkeypatch):
    import visloc.weights.hfnet as hw

    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    base = ["export", "hfnet", "--onnx", str(out)]
    result = runner.invoke(app, [*base, "--weights", str(small_ckpt)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "global_descriptor 200x328" in result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[1].shape[1] == SMALL.descriptor_dim  # --weights reached the code
    result = runner.invoke(app, [*base, "--weights", str(small_ckpt), "--no-check"])
    assert result.exit_code == 0 and "max |diff|" not in result.output
    result = runner.invoke(app, [*base, "--weights", str(small_ckpt), "--opset", "13"])
    assert result.exit_code == 2 and "opset must be >= 17" in result.output
    result = runner.invoke(app, [*base, "--weights", str(tmp_path / "no.pt")])
    assert result.exit_code == 2 and "HF-Net checkpoint not found" in result.output
    monkeypatch.setattr(hw, "DEFAULT_WEIGHTS", tmp_path / "hfnet_default.pt")
    result = runner.invoke(app, [*base, "--no-check"])
    assert result.exit_code == 2 and "no default student" in result.output
    result = runner.invoke(app, [*base, "--no-check", "--allow-random"])
    assert result.exit_code == 0, result.output


def test_fuse_batchnorm_keeps_outputs():
    import copy

    from visloc.models.backbones import fuse_batchnorm

    torch.manual_seed(0)
    model = HFNet(SMALL)
    for m in model.modules():  # non-trivial statistics, so that a wrong fold would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(model)
    model.eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    bns = [m for m in fused.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [fused.netvlad.bn]  # only NetVLAD's membership BN (not after a conv in a Sequential) is left
    x = torch.rand(1, 1, 48, 64)
    with torch.inference_mode():
        a, b = model(x), fused(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_pipelines_run_unchanged(student_ckpt, photo_dir, photo_names, tmp_path):
    import h5py

    from visloc.io.pairs import read_pairs
    from visloc.pipelines.extract import extract_features
    from visloc.pipelines.match_features import match_features
    from visloc.pipelines.retrieve import build_index, retrieve_pairs

    feats = tmp_path / "feats.h5"
    summary = extract_features(photo_dir, feats, extractor="hfnet", overrides=[
        f"weights={student_ckpt}", "resize_max=256", "max_num_keypoints=500"], progress=False)
    assert summary.done == 3 and not summary.failed
    with h5py.File(feats, "r") as f:
        assert f[photo_names[0]]["global_descriptor"].shape == (4096,)
        assert f[photo_names[0]]["descriptors"].shape[0] == 128
    assert build_index(feats, tmp_path / "db.index").dim == 4096
    retrieve_pairs(tmp_path / "db.index", feats, tmp_path / "pairs.txt", k=1)
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 3 and all(a != b for a, b in pairs)
    assert match_features(tmp_path / "pairs.txt", feats, tmp_path / "matches.h5", matcher="nn-mutual",
                          progress=False).done == 3
