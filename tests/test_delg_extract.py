"""DELF / DELG extraction: pyramid geometry, selection, global aggregation, PCA, tiny images, ONNX parity, CLI.

The networks have random weights (``allow_random`` or conftest's ``delg_checkpoint``, a ResNet-18 DELG):
the tests check the extraction around the network, whose own tests are ``test_delg_model.py``.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, nms
from typer.testing import CliRunner

from visloc.conf import ConfError
from visloc.export import export_model
from visloc.features import EXTRACTORS
from visloc.features.api import image_to_tensor
from visloc.features.delf_pca import apply_delf_pca, learn_delf_pca, load_delf_pca, save_delf_pca
from visloc.features.delg import normalisation_of, pyramid_conf
from visloc.features.delg_pipeline import (
    LevelOutput,
    PyramidConf,
    extract_pyramid,
    run_pyramid,
    scaled_side,
    select_features,
)
from visloc.models.delg import DELG, DELGConf
from visloc.models.delg_graph import DELGGraph
from visloc.models.resnet_delg import ReceptiveField
from visloc.weights.load import WeightsError
from visloc.weights.records import DELG_RGB, IMAGENET_RGB


@pytest.fixture(scope="module")
def r50():
    """The tf-layout ResNet-50 DELG extractor, random weights (its stem's padding follows each side's parity)."""
    return EXTRACTORS.build("delg", ["allow_random=true"])


def _forced(ex, cell: tuple[int, int]):
    """``ex.net`` with the attention zero everywhere but 10 at block3 ``cell = (i, j)``."""
    real = ex.net

    def net(x, local, global_):
        out = real(x, local, global_)
        att = torch.zeros_like(out.attention)
        att[:, 0, cell[0], cell[1]] = 10.0
        return LevelOutput(att, out.local, out.global_descriptor)

    return net


@pytest.mark.parametrize("width, scale, expected_x, expected_y", [
    (320, 1.0, 3 + 32 * 2, 3 + 32 * 1),  # tf R50, even sides: offset 3
    (320, 0.5, (3 + 64 + 0.5) / 0.5 - 0.5, (3 + 32 + 0.5) / 0.5 - 0.5),
    (322, 0.5, (2 + 64 + 0.5) / 0.5 - 0.5, (3 + 32 + 0.5) / 0.5 - 0.5),  # 161 px wide at 0.5: odd, offset 2
])
def test_keypoint_of_a_forced_cell(r50, monkeypatch, width, scale, expected_x, expected_y):
    """Cell (i, j) = (1, 2) at scale s: ``((offset + 32 j + 0.5) / s - 0.5, (offset + 32 i + 0.5) / s - 0.5)``."""
    monkeypatch.setattr(r50, "net", _forced(r50, (1, 2)))
    monkeypatch.setattr(r50, "pyramid", PyramidConf((scale,), (), threshold=5.0))
    image = torch.rand(1, 3, 256, width, generator=torch.Generator().manual_seed(0))
    (f,) = r50(image)
    assert f.num_keypoints == 1 and f.image_size == (width, 256)
    assert f.keypoints[0].tolist() == pytest.approx([expected_x, expected_y], abs=1e-4)
    assert f.scores.tolist() == [10.0] and f.extras["scales"].tolist() == pytest.approx([1 / scale])
    # the descriptor is that cell's autoencoder code, L2-normalised
    x = (image - r50.mean) / r50.std
    if scale != 1.0:
        x = F.interpolate(x, size=(scaled_side(256, scale), scaled_side(width, scale)), mode="bilinear",
                          align_corners=False, antialias=False)
    with torch.inference_mode():
        code = r50.model(x, global_=False).local[0, :, 1, 2]
    torch.testing.assert_close(f.descriptors[0], F.normalize(code, dim=0), atol=1e-5, rtol=0)


def _fake_net(maps: dict[int, torch.Tensor], dim: int = 4):
    """A ``NetFn`` giving ``maps[w]`` (``[h', w']``) as attention for an input ``w`` pixels wide."""

    def net(x, local, global_):
        att = maps[int(x.shape[-1])][None, None].expand(x.shape[0], 1, -1, -1)
        loc = torch.arange(dim * att.shape[-2] * att.shape[-1], dtype=torch.float32).view(1, dim, *att.shape[-2:]) + 1
        return LevelOutput(att, loc.expand(x.shape[0], -1, -1, -1), None)

    return net


RF = ReceptiveField(size=65, stride=32, offset=0.0)


def _run(maps, conf: PyramidConf, size=(64, 96)):
    return extract_pyramid(_fake_net(maps), torch.zeros(1, 3, *size), conf, lambda side: RF,
                           lambda d: F.normalize(d, dim=-1), 4, 0)[0]


def test_threshold_vs_top_k():
    att = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.5, 0.2]])
    f = _run({96: att}, PyramidConf((1.0,), (), threshold=0.5, max_num=10))
    assert f.scores.tolist() == pytest.approx([0.9, 0.7, 0.5, 0.5])  # >= threshold, by decreasing score
    assert {tuple(k) for k in f.keypoints[2:].tolist()} == {(64.0, 0.0), (32.0, 32.0)}
    f = _run({96: att}, PyramidConf((1.0,), (), threshold=None, max_num=3))
    assert f.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert f.keypoints[:2].tolist() == [[32.0, 0.0], [0.0, 32.0]]
    f = _run({96: att}, PyramidConf((1.0,), (), threshold=0.8, max_num=3))
    assert f.scores.tolist() == pytest.approx([0.9])
    assert _run({96: att}, PyramidConf((1.0,), (), threshold=1.0)).num_keypoints == 0


def test_pyramid_levels_merge_and_descriptors_follow_their_cells():
    maps = {96: torch.tensor([[0.3, 0.6]]), 48: torch.tensor([[0.8]])}
    f = _run(maps, PyramidConf((0.5, 1.0), (), max_num=10))
    assert f.scores.tolist() == pytest.approx([0.8, 0.6, 0.3])
    assert f.extras["scales"].tolist() == [2.0, 1.0, 1.0]
    assert f.keypoints.tolist() == [[0.5, 0.5], [32.0, 0.0], [0.0, 0.0]]  # (0 + 0.5) / 0.5 - 0.5 at scale 0.5
    # fake local map: channel c of cell k is c * cells + k + 1
    torch.testing.assert_close(f.descriptors[1], F.normalize(torch.tensor([2.0, 4.0, 6.0, 8.0]), dim=0))


def test_nms_iou_one_is_top_k_and_lower_iou_suppresses():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=gen) * 1000
    boxes = torch.cat([xy, xy + 100], dim=1)
    scores = torch.rand(2000, generator=gen)
    top = torch.argsort(scores, descending=True)[:50]
    assert select_features(boxes, scores, 50, 1.0).tolist() == top.tolist() == nms(boxes, scores, 1.0)[:50].tolist()
    for iou, max_num in ((0.3, 50), (0.3, 400), (0.05, 300), (0.6, 2000)):  # the chunked NMS is torchvision's
        kept = select_features(boxes, scores, max_num, iou)
        assert kept.tolist() == nms(boxes, scores, iou)[:max_num].tolist()
    kept = select_features(boxes, scores, 5000, 0.3)
    assert 50 < len(kept) < 2000
    overlap = box_iou(boxes[kept], boxes[kept]).fill_diagonal_(0)
    assert float(overlap.max()) <= 0.3 and scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)
    assert select_features(torch.zeros(0, 4), torch.zeros(0), 5, 1.0).tolist() == []


def test_global_descriptor_is_the_normalised_sum_of_scales(ready_extractor, astronaut_320):
    ex = ready_extractor("delg-global")
    image = image_to_tensor(astronaut_320)
    (f,) = ex(image)
    x = (image - DELG_RGB.mean[0]) / DELG_RGB.std[0]
    total = torch.zeros(ex.global_dim)
    for s in (0.7071, 1.0, 1.4142):
        size = (round(240 * s), round(320 * s))  # 170 x 226, 240 x 320, 339 x 453
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if s != 1.0 else x
        with torch.inference_mode():
            total += F.normalize(ex.model(xs, local=False).global_prelogits[0], dim=0)
    torch.testing.assert_close(f.global_descriptor, F.normalize(total, dim=0), atol=1e-5, rtol=0)
    (g,) = ready_extractor("delg")(image)  # the same pyramid inside delg
    torch.testing.assert_close(g.global_descriptor, f.global_descriptor, atol=1e-6, rtol=0)


def test_batch_runs_one_pass_per_scale_and_conv5_only_at_global_scales(ready_extractor, monkeypatch):
    ex = ready_extractor("delg")
    calls = []
    real = ex.net
    monkeypatch.setattr(ex, "net", lambda x, local, global_: calls.append((x.shape[0], local, global_))
                        or real(x, local, global_))
    ex(torch.rand(3, 3, 64, 96))
    assert calls == [(3, True, False)] * 3 + [(3, True, True)] * 3 + [(3, True, False)]


def test_delf_pca_shapes_and_whitening_decorrelates(tmp_path):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(3000, 64)) @ gen.normal(size=(64, 64)) + 5.0  # correlated, off-centre
    pca = learn_delf_pca(x, dim=16)
    assert pca["mean"].shape == (64,) and pca["projection"].shape == (16, 64) and pca["variances"].shape == (16,)
    assert bool(pca["whiten"]) and np.all(np.diff(pca["variances"]) <= 0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = (xn - pca["mean"]) @ pca["projection"].T / np.sqrt(pca["variances"])
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(16), atol=1e-3)
    np.testing.assert_allclose(np.cov(xn @ pca["projection"].T, rowvar=False), np.diag(pca["variances"]), atol=1e-6)
    out = apply_delf_pca(torch.from_numpy(x[:5]).float(), pca)
    torch.testing.assert_close(out, F.normalize(torch.from_numpy(y[:5]).float(), dim=-1), atol=1e-4, rtol=0)
    path = save_delf_pca(tmp_path / "pca.npz", pca)
    back = load_delf_pca(path)
    assert all(np.array_equal(back[k], pca[k]) for k in pca)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(WeightsError, match=r"bad\.npz: not a DELF PCA"):
        load_delf_pca(tmp_path / "bad.npz")
    np.savez(tmp_path / "part.npz", mean=pca["mean"])
    with pytest.raises(WeightsError, match=r"part\.npz: DELF PCA without \['projection'"):
        load_delf_pca(tmp_path / "part.npz")


def test_delf_with_a_pca_file(ready_extractor, delg_checkpoint, astronaut_320, tmp_path):
    raw = ready_extractor("delf")(image_to_tensor(astronaut_320))[0]
    assert raw.descriptors.shape[1] == 256  # block3 of the ResNet-18
    path = save_delf_pca(tmp_path / "pca.npz", learn_delf_pca(raw.descriptors.numpy(), dim=40))
    conf = [f"weights={delg_checkpoint}", f"pca={path}"]
    ex = EXTRACTORS.build("delf", conf)
    (f,) = ex(image_to_tensor(astronaut_320))
    assert ex.descriptor_dim == 40 and f.descriptors.shape == (raw.num_keypoints, 40)
    torch.testing.assert_close(f.keypoints, raw.keypoints)
    torch.testing.assert_close(f.descriptors.norm(dim=1), torch.ones(f.num_keypoints), atol=1e-5, rtol=0)
    assert EXTRACTORS.capabilities("delf", EXTRACTORS.conf("delf", conf)).descriptor == "delf-40"


def test_delf_pca_cli_learns_from_a_feature_file(tmp_path):
    from visloc.cli import app
    from visloc.io.features_h5 import write_features

    gen = np.random.default_rng(1)
    descs = {f"db/{i}.jpg": gen.normal(size=(50 + i, 32)).astype(np.float32) for i in range(4)}
    feats = tmp_path / "delf_raw.h5"
    write_features(feats, {n: {"keypoints": np.zeros((len(d), 2), np.float32), "scores": np.ones(len(d), np.float32),
                               "descriptors": d} for n, d in descs.items()})
    runner = CliRunner()
    res = runner.invoke(app, ["delf-pca", str(feats), "--out", str(tmp_path / "pca.npz"), "--dim", "8"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"delf-pca: 8-d PCA with whitening -> {tmp_path / 'pca.npz'}"
    want = learn_delf_pca(np.concatenate(list(descs.values())), dim=8)
    got = load_delf_pca(tmp_path / "pca.npz")
    assert all(np.allclose(got[k], want[k], atol=1e-6) for k in ("mean", "variances"))
    np.testing.assert_allclose(np.abs(got["projection"] @ want["projection"].T), np.eye(8), atol=1e-4)  # up to sign
    small = runner.invoke(app, ["delf-pca", str(feats), "--out", str(tmp_path / "p2.npz"), "--dim", "8",
                                "--max-descriptors", "20"])
    assert small.exit_code == 0 and not np.allclose(load_delf_pca(tmp_path / "p2.npz")["mean"], want["mean"])
    bad = runner.invoke(app, ["delf-pca", str(feats), "--out", str(tmp_path / "p3.npz"), "--dim", "40"])
    assert bad.exit_code == 2 and bad.output.strip().endswith(
        f"{feats}: 206 descriptors of 32-d, too few for a 40-d PCA (extract with --conf delf and no pca)")
    assert not (tmp_path / "p3.npz").exists()


@pytest.mark.parametrize("name", ["delg", "delg-global", "delf"])
def test_tiny_images_give_empty_features(name, ready_extractor):
    ex = ready_extractor(name)
    (f,) = ex(torch.rand(1, 3, 8, 40))  # under DELF's 10 px
    assert f.num_keypoints == 0 and f.image_size == (40, 8)
    if name != "delf":
        assert f.global_descriptor is not None and not f.global_descriptor.any()
    if name != "delg-global":
        assert f.descriptors.shape == (0, ex.descriptor_dim) and f.extras["scales"].shape == (0,)
        (g,) = ex(torch.rand(1, 3, 16, 16))  # scales 0.25 to 0.5 skipped (4, 6, 8 px): 0.7071 (11 px) and up remain
        assert g.num_keypoints > 0 and float(g.extras["scales"].max()) == pytest.approx(1 / 0.7071)


def test_run_pyramid_skips_small_scales():
    seen = []
    run_pyramid(lambda x, lo, gl: seen.append(tuple(x.shape[-2:])) or LevelOutput(), torch.zeros(1, 3, 30, 41),
                (0.25, 0.3536, 0.5, 1.0), (1.0,))
    assert seen == [(11, 14), (15, 20), (30, 41)]  # 0.25 gives 8 x 10: skipped
    assert scaled_side(41, 0.5) == 20 and scaled_side(30, 0.25) == 8  # 20.5 -> 20, 7.5 -> 8: half to even (tf.round)


def test_threshold_and_normalisation_come_from_the_weights_records():
    conf = EXTRACTORS.conf("delg")
    assert pyramid_conf(conf, {}).threshold is None
    assert pyramid_conf(conf, {"attention_threshold": 454.6}).threshold == 454.6
    assert pyramid_conf(dataclasses.replace(conf, attention_threshold=0.0), {"attention_threshold": 454.6}
                        ).threshold == 0.0
    assert pyramid_conf(EXTRACTORS.conf("delg-global"), {}).local_scales == ()
    assert normalisation_of(conf, {}) == DELG_RGB
    assert normalisation_of(conf, {"normalisation": "imagenet"}) == IMAGENET_RGB
    assert normalisation_of(dataclasses.replace(conf, normalisation="delg"), {"normalisation": "imagenet"}) == DELG_RGB


def test_weights_errors(tmp_path, delg_checkpoint, monkeypatch):
    import visloc.features.delg as fd

    monkeypatch.setattr(fd, "SHIPPED", "no-such-record")  # an install without the shipped model
    with pytest.raises(WeightsError, match=r"^delg: no weights and no shipped model in this install; give a visloc "
                                           r"delg checkpoint"):
        EXTRACTORS.build("delg")
    with pytest.raises(WeightsError, match=r"nope\.pt"):
        EXTRACTORS.build("delg", [f"weights={tmp_path / 'nope.pt'}"])
    with pytest.raises(ConfError, match=r"delg: the network has no global head"):
        EXTRACTORS.build("delg", ["preset=delf-r50", "allow_random=true"])
    with pytest.raises(ConfError, match=r"max_num_keypoints"):
        EXTRACTORS.build("delg", [f"weights={delg_checkpoint}", "max_num_keypoints=0"])
    assert EXTRACTORS.capabilities("delg").needs == {"weights"}
    from visloc.pipelines.export import export_registered

    with pytest.raises(WeightsError, match=r"delg: no weights"):
        export_registered("delg", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_delf_network_gives_block3_descriptors():
    ex = EXTRACTORS.build("delf", ["allow_random=true"])  # preset delf-r50: no autoencoder, no global head
    (f,) = ex(torch.rand(1, 3, 64, 96))
    assert ex.descriptor_dim == 1024 and f.descriptors.shape == (f.num_keypoints, 1024) and f.num_keypoints > 10
    assert f.global_descriptor is None
    assert EXTRACTORS.capabilities("delf", ex.conf).descriptor == "delf-1024"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_graph_equals_the_network_at_odd_sizes_and_exports_tf_layout(tmp_path):
    """The tf stem's parity-dependent padding survives tracing (DELGGraph's pre-padding of odd sides)."""
    torch.manual_seed(0)
    model = DELG(DELGConf(50, "tf", attention_dim=8, local_dim=8, global_dim=8)).eval()
    graph = DELGGraph(model).eval()
    x = torch.rand(1, 3, 75, 101) * 2 - 1
    with torch.inference_mode():
        ref, got = model(x), graph(x)
    assert torch.equal(ref.attention, got["attention"]) and torch.equal(ref.local, got["local"])
    spec = graph.export_spec(height=64, width=96, check_sizes=((75, 101), (97, 64)))
    result = export_model(graph, spec, tmp_path / "tf.onnx")
    assert max(result.max_abs_diff.values()) <= 1e-4


def test_delg_onnx_equals_delg(ready_extractor, delg_checkpoint, tmp_path, astronaut_320):
    from visloc.pipelines.export import export_registered

    image = image_to_tensor(astronaut_320[:150, :200])  # 150 x 200: fewer cells than max_num_keypoints
    torch_f = ready_extractor("delg")(image)[0]
    out = tmp_path / "delg.onnx"
    export_registered("delg", out, weights=delg_checkpoint)
    for ex in (ready_extractor("delg-onnx"), EXTRACTORS.build("delg-onnx", [f"onnx={out}"])):
        (f,) = ex(image)
        assert f.num_keypoints == torch_f.num_keypoints > 100

        def order(g):
            return np.lexsort(np.c_[g.keypoints.numpy(), g.extras["scales"].numpy()].T)

        a, b = order(torch_f), order(f)
        assert torch.equal(torch_f.keypoints[a], f.keypoints[b])
        assert torch.equal(torch_f.extras["scales"][a], f.extras["scales"][b])
        torch.testing.assert_close(torch_f.descriptors[a], f.descriptors[b], atol=1e-4, rtol=0)
        torch.testing.assert_close(torch_f.global_descriptor, f.global_descriptor, atol=1e-5, rtol=0)


def test_cli_extract_index_search(photo_dir, delg_checkpoint, tmp_path):
    from visloc.cli import app

    runner = CliRunner()
    feats, index, pairs = tmp_path / "f.h5", tmp_path / "db.faiss", tmp_path / "pairs.txt"
    result = runner.invoke(app, ["extract", str(photo_dir), "--conf", "delg", "--set", "preset=delg-r18", "--set",
                                 "allow_random=true", "--set", "resize_max=256", "--out", str(feats)])
    assert result.exit_code == 0, result.output
    with h5py.File(feats) as f:
        g = f["astronaut.png"]
        n = len(g["keypoints"])  # 256 x 256: every cell of the pyramid is kept (< 1000)
        assert n > 300 and g["scales"].shape == (n,) and g["descriptors"].shape == (128, n)
        assert g["global_descriptor"].shape == (512,)
        inverse = 1 / np.asarray(PyramidConf().local_scales, np.float32)
        assert np.abs(np.unique(g["scales"][:])[:, None] - inverse).min(axis=1).max() < 1e-6
    assert runner.invoke(app, ["index", "build", "--features", str(feats), "--out", str(index)]).exit_code == 0
    result = runner.invoke(app, ["search", "--index", str(index), "--features", str(feats), "--out", str(pairs),
                                 "-k", "2"])
    assert result.exit_code == 0, result.output
    assert len(pairs.read_text().splitlines()) == 6



def test_checkpoint_extras_set_the_threshold_and_normalisation(tmp_path):
    from visloc.features.delg import load_delg
    from visloc.weights.checkpoint import load_model_record, save_model

    path = save_model(tmp_path / "d.pt", "delg", DELG(DELGConf(18, "torchvision", 32, 16, 32)).eval(),
                      extras={"attention_threshold": 12.5, "normalisation": "imagenet"})
    assert load_model_record(path, "delg").extras == {"attention_threshold": 12.5, "normalisation": "imagenet"}
    _, extras = load_delg(str(path))
    conf = dataclasses.replace(EXTRACTORS.conf("delg"), weights=str(path))
    assert pyramid_conf(conf, extras).threshold == 12.5
    assert normalisation_of(conf, extras) == IMAGENET_RGB


def test_the_shipped_model_is_the_default(astronaut_320):
    from visloc.features.delg import SHIPPED
    from visloc.weights.records import WEIGHTS, check_shipped, shipped_path

    path = check_shipped(SHIPPED, shipped_path(SHIPPED))  # the record's sha256
    assert WEIGHTS[SHIPPED].preprocessing == DELG_RGB and path.stat().st_size < 50 * 2**20
    ex = EXTRACTORS.build("delg", ["resize_max=320"])  # no weights, no allow_random: delg-world
    assert EXTRACTORS.capabilities("delg").weights == (str(path),)
    assert EXTRACTORS.capabilities("delg").needs == frozenset() and ex.descriptor_dim == 128
    (f,) = ex(image_to_tensor(astronaut_320))
    # no threshold recorded: top-k 1000, and a 320 px image has only 631 cells over the 7 scales: all kept
    assert f.num_keypoints == 631 and f.global_descriptor.shape == (512,)
    random = EXTRACTORS.build("delg", ["resize_max=320", "allow_random=true", "preset=delg-r18"])
    assert not torch.equal(random(image_to_tensor(astronaut_320))[0].global_descriptor, f.global_descriptor)
