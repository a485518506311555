"""Coarse LoFTR: architecture, equality with kornia's LoFTR blocks, match extraction, ONNX, LoFTR checkpoints."""

from __future__ import annotations

import onnx
import pytest
import torch
from kornia.feature.loftr.backbone.resnet_fpn import ResNetFPN_8_2, ResNetFPN_16_4
from kornia.feature.loftr.loftr import LoFTR
from kornia.feature.loftr.loftr_module.transformer import LocalFeatureTransformer
from kornia.feature.loftr.utils.position_encoding import PositionEncodingSine

from visloc.conf import ConfError
from visloc.errors import InputError
from visloc.export import export_model
from visloc.matching import MATCHERS
from visloc.models.coarse_loftr import (
    PRESETS,
    CoarseLoFTR,
    CoarseLoFTRConf,
    CoarseLoFTRGraph,
    CoarseMatchConf,
    cell_centers,
    count_parameters,
    extract_matches,
    match_mask,
    sine_encoding,
)
from visloc.weights.converters.loftr import load_loftr_coarse, loftr_state_dict
from visloc.weights.load import WeightsError


def _random(conf: CoarseLoFTRConf, seed: int = 0) -> CoarseLoFTR:
    torch.manual_seed(seed)
    model = CoarseLoFTR(conf).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so that a wrong layout would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_s_preset_is_kolkirs_student_without_the_dead_fpn_branch():
    # Kolkir's checkpoint holds 158,840 parameters, 33,920 of them in the FPN branch that only the dropped fine
    # level reads (research note): the coarse student is the rest
    assert count_parameters(CoarseLoFTR(PRESETS["s"])) == 158_840 - 33_920
    assert not any("outconv2" in k or "layer3_outconv" in k for k in CoarseLoFTR(PRESETS["s"]).state_dict())


@pytest.mark.parametrize("name", ["s", "loftr-outdoor"])
def test_transformer_equals_kornias_on_the_same_weights(name):
    c = PRESETS[name]
    ours = _random(c).loftr_coarse
    theirs = LocalFeatureTransformer({"d_model": c.d_model, "nhead": c.nhead, "layer_names": list(c.layer_names),
                                      "attention": "linear"}).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: the same names and shapes
    g = torch.Generator().manual_seed(1)
    f0, f1 = torch.randn(2, 300, c.d_model, generator=g), torch.randn(2, 200, c.d_model, generator=g)
    with torch.no_grad():
        a, b = ours(f0, f1), theirs(f0, f1)
    torch.testing.assert_close(a[0], b[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=2e-5, rtol=0)


@pytest.mark.parametrize("fix", [True, False])
@pytest.mark.parametrize("d_model", [32, 256])
def test_positional_encoding_equals_kornias(fix, d_model):
    theirs = PositionEncodingSine(d_model, (30, 40), temp_bug_fix=fix).pe
    assert torch.equal(sine_encoding(d_model, 30, 40, fix), theirs)
    assert not torch.equal(sine_encoding(d_model, 30, 40, True), sine_encoding(d_model, 30, 40, False))


@pytest.mark.parametrize(("resolution", "kornia_cls", "dims"), [(16, ResNetFPN_16_4, [8, 16, 32, 32]),
                                                                 (8, ResNetFPN_8_2, [8, 24, 32])])
def test_backbone_equals_kornias_coarse_output(resolution, kornia_cls, dims):
    torch.manual_seed(0)
    theirs = kornia_cls({"initial_dim": 8, "block_dims": dims}).eval()
    conf = CoarseLoFTRConf(resolution=resolution, initial_dim=8, block_dims=tuple(dims), d_model=32)
    ours = CoarseLoFTR(conf).eval()
    outconv = f"layer{len(dims)}_outconv."
    sd = {k: v for k, v in theirs.state_dict().items() if "outconv" not in k or k.startswith(outconv)}
    ours.backbone.load_state_dict(sd)  # strict: everything else is the same
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours.backbone(x), theirs(x)[0], atol=1e-5, rtol=0)
    assert ours.backbone(x).shape == (2, 32, 64 // resolution, 96 // resolution)


def test_forward_shapes_dual_softmax_and_batching():
    model = _random(PRESETS["s"])
    x0, x1 = torch.rand(2, 1, 96, 128), torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        out = model(x0, x1)
        single = model(x0[1:], x1[1:])
    assert out["conf"].shape == out["sim"].shape == (2, 48, 48)
    logits = out["sim"] / 0.1
    torch.testing.assert_close(out["conf"], logits.softmax(1) * logits.softmax(2))
    assert float(out["conf"].max()) <= 1.0 and float(out["conf"].min()) >= 0.0
    torch.testing.assert_close(out["conf"][1:], single["conf"], atol=1e-5, rtol=0)
    with torch.no_grad():  # images of different sizes take two backbone passes
        assert model(x0[:1], torch.rand(1, 1, 64, 128))["conf"].shape == (1, 48, 32)


def test_bad_sizes_and_confs_are_one_line_errors():
    model = CoarseLoFTR()
    with pytest.raises(InputError, match=r"image size 100x96 must be positive multiples of the resolution 16"):
        model(torch.rand(1, 1, 96, 100), torch.rand(1, 1, 96, 100))
    with pytest.raises(ValueError, match=r"image0: expected gray images \[B, 1, H, W\], got \(1, 3, 96, 96\)"):
        model(torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96))
    with pytest.raises(ConfError, match=r"block_dims: 4 positive dims for resolution 16"):
        CoarseLoFTRConf(block_dims=(8, 16, 32))
    with pytest.raises(ConfError, match=r"d_model: must equal block_dims\[-1\] = 32"):
        CoarseLoFTRConf(d_model=64)
    with pytest.raises(ConfError, match=r"nhead: must divide d_model = 32, got 3"):
        CoarseLoFTRConf(nhead=3)
    with pytest.raises(ConfError, match=r"threshold in \[0, 1\)"):
        CoarseMatchConf(threshold=1.0)


def test_match_mask_threshold_border_mutual_on_a_constructed_matrix():
    # grids of 5 x 5 cells, border 1: the inner cells are 6, 7, 8, 11, 12, 13, 16, 17, 18
    conf = torch.zeros(1, 25, 25)
    conf[0, 6, 7] = 0.9    # inner, mutual -> match
    conf[0, 12, 12] = 0.5  # inner, mutual -> match
    conf[0, 12, 13] = 0.4  # not its row's maximum
    conf[0, 18, 12] = 0.45  # its row's maximum, but not its column's (0.5 in row 12)
    conf[0, 0, 1] = 0.95   # border cell of image 0
    conf[0, 13, 24] = 0.8  # border cell of image 1
    conf[0, 16, 16] = 0.15  # below the threshold
    mask = match_mask(conf, (5, 5), (5, 5), CoarseMatchConf(threshold=0.2, border=1))
    assert sorted(map(tuple, torch.nonzero(mask[0]).tolist())) == [(6, 7), (12, 12)]
    loose = match_mask(conf, (5, 5), (5, 5), CoarseMatchConf(threshold=0.1, border=0, mutual=False))
    assert int(loose.sum()) == 7
    ((idx0, idx1, scores),) = extract_matches(conf, mask)
    assert idx0.tolist() == [6, 12] and idx1.tolist() == [7, 12]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.5]))
    with pytest.raises(ValueError, match=r"conf must be \[B, 25, 16\]"):
        match_mask(conf, (5, 5), (4, 4))


def test_extract_matches_keeps_one_row_per_column_on_ties():
    conf = torch.zeros(1, 4, 4)
    conf[0, 1, 2] = conf[0, 3, 2] = 0.7  # two rows tie for column 2
    ((idx0, idx1, _),) = extract_matches(conf, match_mask(conf, (2, 2), (2, 2), CoarseMatchConf(border=0)))
    assert idx0.tolist() == [1] and idx1.tolist() == [2]


def test_cell_centers_pixel_centre_convention():
    c = cell_centers(2, 3, 16)
    assert c.tolist() == [[7.5, 7.5], [23.5, 7.5], [39.5, 7.5], [7.5, 23.5], [23.5, 23.5], [39.5, 23.5]]


def test_onnx_graph_is_static_einsum_free_and_matches_torch(tmp_path):
    graph = CoarseLoFTRGraph(_random(PRESETS["s"]), CoarseMatchConf(threshold=0.0))  # random net: low confidences
    spec = graph.export_spec(height=96, width=128)
    result = export_model(graph, spec, tmp_path / "m.onnx")
    assert result.max_abs_diff["mask 96x128"] == 0 and result.max_abs_diff["conf 96x128"] < 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Einsum", "NonZero", "TopK", "ArgMax", "Loop", "If"}
    assert proto.opset_import[0].version >= 17
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert dims == [[1, 1, 96, 128], [1, 1, 96, 128]]
    with pytest.raises(InputError, match="static shapes only"):
        graph.export_spec(dynamic=True)


def test_onnx_matcher_gives_the_torch_matchers_matches(tmp_path):
    net = _random(PRESETS["s"])
    path = tmp_path / "random.pt"
    from visloc.weights.checkpoint import save_model

    save_model(path, "loftr-coarse", net)
    sets = [f"weights={path}", "match.threshold=0.0", "match.border=1", "size=[128, 96]"]
    torch_m = MATCHERS.build("loftr-coarse", sets)
    onnx_m = MATCHERS.build("loftr-coarse-onnx", sets)
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.rand(1, 1, 120, 160, generator=g), torch.rand(1, 1, 120, 160, generator=g)
    (a,), (b,) = torch_m(x0, x1), onnx_m(x0, x1)
    assert a.num_matches > 5 and torch.equal(a.matches, b.matches)
    torch.testing.assert_close(a.keypoints0, b.keypoints0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
    # keypoints are cell centres of the 128 x 96 graph, mapped back to 160 x 120 pixels
    cells = cell_centers(6, 8, 16)
    expected = (cells + 0.5) * 1.25 - 0.5
    assert all(any(torch.allclose(k, e) for e in expected) for k in a.keypoints0)


def test_torch_matcher_pads_and_drops_matches_in_the_padding():
    m = MATCHERS.build("loftr-coarse", ["allow_random=true", "match.threshold=0.0", "match.border=0"])
    (out,) = m(torch.rand(1, 1, 100, 120), torch.rand(1, 1, 100, 120))  # padded to 112 x 128
    assert out.num_matches > 0
    assert float(out.keypoints0[:, 0].max()) <= 119.5 and float(out.keypoints0[:, 1].max()) <= 99.5


def test_loftr_checkpoint_coarse_level_loads_and_equals_kornias(tmp_path):
    torch.manual_seed(0)
    kornia_loftr = LoFTR(pretrained=None).eval()
    ckpt = tmp_path / "outdoor_ds.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in kornia_loftr.state_dict().items()}, "epoch": 29}, ckpt)
    assert set(loftr_state_dict(ckpt)) == set(kornia_loftr.state_dict())
    ours = load_loftr_coarse(ckpt, "loftr-outdoor")
    x0, x1 = torch.rand(1, 1, 96, 128), torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        t = [kornia_loftr.pos_encoding(kornia_loftr.backbone(x)[0]).flatten(2).transpose(1, 2) for x in (x0, x1)]
        f0, f1 = kornia_loftr.loftr_coarse(*t)
        sim = (f0 / 16) @ (f1 / 16).transpose(1, 2) / 0.1
        theirs = sim.softmax(1) * sim.softmax(2)
        torch.testing.assert_close(ours(x0, x1)["conf"], theirs, atol=1e-6, rtol=0)
    with pytest.raises(WeightsError, match=r"does not fit Coarse LoFTR \(8, 16, 32, 32\)"):
        load_loftr_coarse(ckpt, "s")
    with pytest.raises(WeightsError, match=r"nothing.ckpt: LoFTR checkpoint not found"):
        load_loftr_coarse(tmp_path / "nothing.ckpt")


def test_loftr_full_matcher_needs_a_users_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match=r"loftr: give the checkpoint with --set weights=FILE"):
        MATCHERS.build("loftr")


def test_presets_are_valid_and_distinct():
    assert {"s", "m", "loftr-outdoor", "loftr-indoor"} <= set(PRESETS)
    assert PRESETS["loftr-outdoor"].temp_bug_fix is False and PRESETS["s"].temp_bug_fix is True
    assert count_parameters(CoarseLoFTR(PRESETS["m"])) > 4 * count_parameters(CoarseLoFTR(PRESETS["s"]))
