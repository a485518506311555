"""Parts of the distillation recipe: losses, config, teacher targets, cache, data, BDD selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visloc.conf import ConfError
from visloc.train.hfnet.conf import CacheConf, DataConf, TeacherConf
from visloc.train.hfnet.losses import DistillationLoss, descriptor_l2, detector_cross_entropy, global_l2
from visloc.train.recipe_base import load_recipe_conf


def test_detector_cross_entropy_analytic():
    # one cell: uniform logits -> log_softmax = -log 65 everywhere; any target distribution gives log 65
    logits = torch.zeros(1, 65, 1, 1)
    target = torch.zeros(1, 65, 1, 1)
    target[0, 3], target[0, 64] = 0.25, 0.75
    assert detector_cross_entropy(logits, target).item() == pytest.approx(math.log(65), abs=1e-6)
    # a logit of a on channel 3: CE = -0.25 (a - lse) - 0.75 (0 - lse), lse = log(64 + e^a)
    logits[0, 3] = 2.0
    lse = math.log(64 + math.exp(2.0))
    assert detector_cross_entropy(logits, target).item() == pytest.approx(-0.25 * (2.0 - lse) + 0.75 * lse, abs=1e-6)


def test_l2_losses_exact():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert global_l2(s, t).item() == pytest.approx(1.0)  # (2 + 0) / 2
    d_s = torch.zeros(1, 2, 1, 2)
    d_t = torch.zeros(1, 2, 1, 2)
    d_s[0, 0] = 1.0
    d_t[0, 1, 0, 0] = 1.0  # cell 0 orthogonal (distance^2 2), cell 1: 1 vs 0 (distance^2 1)
    assert descriptor_l2(d_s, d_t).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="global descriptors"):
        global_l2(s, t[:1])


def test_uncertainty_weighting_formula():
    loss = DistillationLoss(learned_weights=True, init_log_vars=(0.5, -1.0, 2.0))
    pred = {
        "global_descriptor": torch.tensor([[1.0, 0.0]]),
        "dense_descriptors": torch.ones(1, 1, 1, 1),
        "logits": torch.zeros(1, 65, 1, 1),
    }
    cells = torch.full((1, 65, 1, 1), 1 / 65)
    out = loss(pred, torch.zeros(1, 1, 1, 1), cells, torch.tensor([[0.0, 1.0]]))
    lg, ld, lc = 2.0, 1.0, math.log(65)
    expected = math.exp(-0.5) * lg + 0.5 + math.exp(1.0) * ld - 1.0 + math.exp(-2.0) * lc + 2.0
    assert out["total"].item() == pytest.approx(expected, rel=1e-6)
    assert out["global"].item() == pytest.approx(lg) and out["detector"].item() == pytest.approx(lc)
    assert out["s_descriptor"].item() == -1.0
    out["total"].backward()  # d total / d s_i = 1 - exp(-s_i) L_i
    assert loss.log_vars.grad[0].item() == pytest.approx(1 - math.exp(-0.5) * lg, rel=1e-5)
    fixed = DistillationLoss(learned_weights=False, weights=(1.0, 2.0, 0.0))
    assert fixed(pred, torch.zeros(1, 1, 1, 1), cells, torch.tensor([[0.0, 1.0]]))["total"].item() == pytest.approx(
        lg + 2 * ld
    )


def test_config_overrides_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: hfnet-distill\nrun_dir: /tmp/x\ndata: {builtin: true}\ntrain: {max_steps: 10}\n")
    name, conf = load_recipe_conf(cfg, ["train.max_steps=2000", "data.size=[128,96]", "student.model.width_mult=0.5"])
    assert name == "hfnet-distill"
    assert conf.train.max_steps == 2000 and conf.data.size == (128, 96) and conf.student.model.width_mult == 0.5
    assert conf.student.model.descriptor_dim == 128  # the default student keeps its other fields
    with pytest.raises(ConfError, match=r"unknown key\(s\) \['max_stepz'\]"):
        load_recipe_conf(cfg, ["train.max_stepz=3"])
    with pytest.raises(ConfError, match="expected int"):
        load_recipe_conf(cfg, ["train.batch_size=abc"])
    with pytest.raises(ConfError, match="data.size"):
        load_recipe_conf(cfg, ["data.size=[100,96]"])
    with pytest.raises(ConfError, match="no images"):
        load_recipe_conf(cfg, ["data.builtin=false"])
    with pytest.raises(ConfError, match=r"train.log_every: must be >= 1, got 0"):
        load_recipe_conf(cfg, ["train.log_every=0"])
    # dimensions that no teacher gives fail at load time, before any process starts
    with pytest.raises(ConfError, match=r"descriptor_dim=64 but the local teacher aliked-n16 gives 128"):
        load_recipe_conf(cfg, ["student.model.descriptor_dim=64"])
    with pytest.raises(ConfError, match=r"global_dim=4096 but the global teacher \(VLAD, 8 x 128\) gives 1024"):
        load_recipe_conf(cfg, ["teacher.vlad_clusters=8"])
    with pytest.raises(ConfError, match="not found"):
        load_recipe_conf(tmp_path / "missing.yaml")


def test_cell_distribution_convention():
    from visloc.models.hfnet import logits_to_heatmap
    from visloc.train.hfnet.teachers import cell_centres, cell_distribution

    score = torch.zeros(1, 1, 16, 8)
    score[0, 0, 8 + 5, 2] = 0.9  # cell (1, 0), pixel row 5, column 2 inside it
    cells = cell_distribution(score, temperature=0.02, dustbin_score=0.2)
    assert cells.shape == (1, 65, 2, 1)
    assert cells[0, :, 0, 0].argmax().item() == 64  # empty cell -> dustbin
    assert cells[0, 8 * 5 + 2, 1, 0].item() > 0.99
    assert torch.allclose(cells.sum(1), torch.ones(1, 2, 1))
    # log-probabilities as logits give the student heatmap peaking at the same pixel
    heat = logits_to_heatmap(cells.log())
    assert heat[0].argmax().item() == (8 + 5) * 8 + 2
    assert cell_centres(2, 3)[4].tolist() == [11.5, 11.5]  # cell (1, 1)


def test_vlad_torch_exact_on_a_constructed_batch():
    from visloc.retrieval.vlad import vlad, vlad_torch

    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # image 0: two descriptors in cluster 0, two in cluster 1; image 1: one in cluster 2, repeated
    x = torch.tensor(
        [[[1.0, 0.0], [0.0, 2.0], [11.0, 1.0], [9.0, 2.0]], [[0.0, 13.0], [0.0, 13.0], [0.0, 13.0], [0.0, 13.0]]]
    )
    out = vlad_torch(x, c)
    # residual sums: image 0 cluster 0 (1, 2), cluster 1 (0, 3), cluster 2 empty; image 1 cluster 2 (0, 12)
    v0, v1 = np.array([1.0, 2.0]) / np.sqrt(5), np.array([0.0, 1.0])
    expected0 = np.concatenate([v0, v1, [0.0, 0.0]]) / np.sqrt(2)
    expected1 = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert out.shape == (2, 6) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.stack([expected0, expected1]), atol=1e-6)
    ssr = np.sign(np.concatenate([v0, v1, [0, 0]])) * np.sqrt(np.abs(np.concatenate([v0, v1, [0, 0]])))
    np.testing.assert_allclose(vlad_torch(x, c, power_norm=True)[0].numpy(), ssr / np.linalg.norm(ssr), atol=1e-6)
    raw = np.array([1.0, 2.0, 0.0, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(vlad_torch(x, c, intra_norm=False)[0].numpy(), raw / np.linalg.norm(raw), atol=1e-6)
    assert torch.equal(vlad_torch(torch.zeros(2, 0, 2), c), torch.zeros(2, 6))  # no descriptors: zeros
    # the numpy entry point is the same function on one image
    np.testing.assert_array_equal(vlad(x[1].numpy(), c.numpy()), expected1.astype(np.float32))
    with pytest.raises(ValueError, match=r"descriptors: expected \[B, N, 2\]"):
        vlad_torch(torch.zeros(4, 3), c)


@pytest.fixture(scope="module")
def teacher():
    from visloc.train.hfnet.teachers import AlikedTeacher

    return AlikedTeacher(TeacherConf())


def test_teacher_dense_target_is_aliked_at_cell_centres(teacher):
    from visloc.data.homography import fit_image
    from visloc.train.datasets.images import load_rgb

    img = torch.from_numpy(fit_image(load_rgb("skimage:astronaut"), (64, 48))).permute(2, 0, 1)[None]
    dense, scores = teacher.dense_and_scores(img)
    assert dense.shape == (1, 128, 6, 8) and scores.shape == (1, 1, 48, 64)
    _, cells, kpts = teacher.local(img)
    assert cells.shape == (1, 65, 6, 8) and kpts[0].shape[1] == 2
    # kornia's own ALIKED forward (full-resolution map + SDDH) at the same pixels (8 j + 3.5, 8 i + 3.5)
    net = teacher.aliked.net
    feats, _ = net.extract_dense_map(img)
    pix = torch.tensor([[3.5, 3.5], [8 * 7 + 3.5, 8 * 5 + 3.5], [8 * 2 + 3.5, 8 * 1 + 3.5]])
    ref, _ = net.desc_head(feats, [2 * pix / torch.tensor([63.0, 47.0]) - 1])
    ours = dense[0, :, [0, 5, 1], [0, 7, 2]].T
    assert (ref[0] * ours).sum(-1).min().item() > 0.999
    with pytest.raises(ValueError, match="VLAD vocabulary"):
        teacher(img)


def test_cache_roundtrip_and_estimate():
    from visloc.train.hfnet.cache import compress, decompress, estimate_bytes_per_image

    g = torch.Generator().manual_seed(0)
    dense = F.normalize(torch.randn(8, 4, 6, generator=g), dim=0)
    cells = torch.softmax(torch.randn(65, 4, 6, generator=g) * 3, dim=0)
    glob = F.normalize(torch.randn(32, generator=g), dim=0)
    kp = torch.tensor([[1.0, 2.0]])
    full = decompress(compress(dense, cells, glob, kp, CacheConf(fp16=False, top_k=0)), 4, 6)
    assert torch.allclose(full["dense"], dense, atol=1e-6) and torch.allclose(full["cells"], cells, atol=1e-6)
    small = decompress(compress(dense, cells, glob, kp, CacheConf(fp16=True, top_k=65)), 4, 6)
    assert (small["dense"] - dense).abs().max() < 2e-3
    top1 = decompress(compress(dense, cells, glob, kp, CacheConf(top_k=1)), 4, 6)["cells"]
    assert torch.equal(top1.argmax(0), cells.argmax(0)) and torch.allclose(top1.amax(0), torch.ones(4, 6))
    constant = F.normalize(torch.ones(8, 4, 6), dim=0)  # pooling a constant map and restoring it is exact
    red = decompress(compress(constant, cells, glob, kp, CacheConf(reduce=2)), 4, 6)["dense"]
    assert red.shape == (8, 4, 6) and torch.allclose(red, constant, atol=1e-3)
    # 640x480: 128 x 60 x 80 fp16 + 4800 cells x 4 x 3 B + 4096 x 2 B + 512 keypoints x 8 B
    assert estimate_bytes_per_image((640, 480), 128, 4096, CacheConf()) == 1228800 + 57600 + 8192 + 4096


def test_dataset_items_and_bad_images(tmp_path, caplog):
    from visloc.train.datasets.images import collate, read_list
    from visloc.train.hfnet.data import DistillDataset

    good = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nbad.jpg\na.png\n")
    names = read_list(lst)
    assert names == [str(tmp_path / "bad.jpg"), str(good)]
    conf = DataConf(lists=(str(lst),), size=(64, 32), homographic=True)
    ds = DistillDataset(names, conf)
    with caplog.at_level("WARNING"):
        item = ds[0]  # the bad image is skipped with a log line and replaced by the next one
    assert "bad.jpg" in caplog.text and item["name"] == str(good)
    assert item["image"].shape == (3, 32, 64) and item["student_image"].shape == (1, 32, 64)
    assert 0 <= item["student_image"].min() and item["student_image"].max() <= 1
    batch = collate([ds[1], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 64) and batch["name"] == [str(good)] * 2
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="none of the 2 training images"):
        DistillDataset(names, conf)[0]


def test_photometric_primitives_change_the_image():
    from visloc.train.datasets.augment import PRIMITIVES, photometric_hfnet

    img = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    rng = np.random.default_rng(1)
    for fn in PRIMITIVES:
        out = fn(rng, img)
        assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    out = photometric_hfnet(np.random.default_rng(2), img)
    assert out.dtype == np.float32 and np.abs(out - img).mean() > 0.01
    with pytest.raises(ValueError, match="grayscale"):
        photometric_hfnet(rng, np.zeros((4, 4, 3), np.float32))


def _jpeg(path, w=128, h=72):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def test_bdd_selection(tmp_path):
    from visloc.data.bdd import select_bdd

    images = tmp_path / "images"
    for n in ("n1.jpg", "d1.jpg", "dusk.jpg", "day.jpg"):
        _jpeg(images / n)
    (images / "broken.jpg").write_bytes(b"xx")
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps(
            [
                {"name": "n1.jpg", "attributes": {"timeofday": "night", "weather": "clear"}},
                {"name": "day.jpg", "attributes": {"timeofday": "daytime"}},
                {"name": "dusk.jpg", "attributes": {"timeofday": "dawn/dusk"}},
                {"name": "missing.jpg", "attributes": {"timeofday": "night"}},
                {"name": "broken.jpg", "attributes": {"timeofday": "night"}},
                {"attributes": {"timeofday": "night"}},
                {"name": "d1.jpg"},
            ]
        )
    )
    out = tmp_path / "out"
    s = select_bdd(labels, images, out, size=64)
    assert s.done == 2 and s.already_done == 0
    assert sorted(n for n, _ in s.failed) == ["broken.jpg", "entry 5", "missing.jpg"]
    assert (out / "images.txt").read_text().splitlines() == ["n1.jpg", "dusk.jpg"]
    assert Image.open(out / "n1.jpg").size == (64, 36)
    again = select_bdd(labels, images, out, size=64)  # resumable: nothing redone
    assert again.done == 0 and again.already_done == 2


def _official_superpoint_forward(sd, x):
    """MagicLeap's SuperPointNet.forward (demo_superpoint.py), written with functional calls only."""

    def conv(name, t, pad=1):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=pad)

    x = F.max_pool2d(F.relu(conv("conv1b", F.relu(conv("conv1a", x)))), 2, 2)
    x = F.max_pool2d(F.relu(conv("conv2b", F.relu(conv("conv2a", x)))), 2, 2)
    x = F.max_pool2d(F.relu(conv("conv3b", F.relu(conv("conv3a", x)))), 2, 2)
    x = F.relu(conv("conv4b", F.relu(conv("conv4a", x))))
    semi = conv("convPb", F.relu(conv("convPa", x)), pad=0)
    desc = conv("convDb", F.relu(conv("convDa", x)), pad=0)
    return semi, desc / torch.norm(desc, p=2, dim=1, keepdim=True)


def test_superpoint_official_layout_and_teacher(tmp_path):
    from visloc.models.superpoint import LAYERS
    from visloc.train.hfnet.superpoint_teacher import SuperPointTeacher
    from visloc.train.hfnet.teachers import build_teacher
    from visloc.weights.converters.superpoint import load_superpoint
    from visloc.weights.load import WeightsError

    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, c_in, c_out, k in LAYERS:
        sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (c_in * k * k)) ** 0.5
        sd[f"{name}.bias"] = torch.randn(c_out, generator=g) * 0.01
    path = tmp_path / "superpoint_v1.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # a DataParallel-saved copy loads too
    net = load_superpoint(path)
    x = torch.rand(2, 1, 48, 64, generator=g)
    out = net(x)
    semi, desc = _official_superpoint_forward(sd, x)
    assert torch.allclose(out["logits"], semi, atol=1e-5) and torch.allclose(out["descriptors"], desc, atol=1e-5)
    torch.save({"conv1a.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="not superpoint_v1.pth weights"):
        load_superpoint(tmp_path / "wrong.pth")

    teacher = build_teacher(TeacherConf(local="superpoint", local_weights=str(path)))
    assert isinstance(teacher, SuperPointTeacher) and teacher.global_dim == 32 * 256
    dense, cells, kpts = teacher.local(x.expand(-1, 3, -1, -1))
    assert dense.shape == (2, 256, 6, 8) and torch.allclose(cells, semi.softmax(1), atol=1e-5)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 6, 8), atol=1e-5)
    # a constant coarse descriptor map samples to that constant at every cell centre
    from visloc.train.hfnet.superpoint_teacher import sample_superpoint

    const = F.normalize(torch.ones(1, 4, 6, 8), dim=1)
    pts = torch.tensor([[[3.5, 3.5], [60.0, 44.0]]])
    assert torch.allclose(sample_superpoint(const, pts), const[:, :, 0, 0][:, None].expand(1, 2, 4), atol=1e-6)
