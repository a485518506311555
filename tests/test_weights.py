"""visloc.weights: safe loading, the model checkpoint format, records and the shipped default student."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from visloc.models.hfnet import HFNet, HFNetConf
from visloc.weights import records
from visloc.weights.checkpoint import FORMAT, build_model, load_model_record, save_model
from visloc.weights.hfnet import DEFAULT_WEIGHTS, load_hfnet, resolve_hfnet, save_hfnet
from visloc.weights.load import WeightsError, as_state_dict, safe_load

SMALL = HFNetConf(width_mult=0.35, head_channels=16, descriptor_dim=8, num_clusters=2, global_feature_dim=8,
                  global_dim=16)


class _Pickled:
    """A Python object that ``weights_only=True`` must refuse."""


def test_safe_load_names_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(WeightsError, match=re.escape(f"{missing}: test weights not found")):
        safe_load(missing, "test weights")
    with pytest.raises(WeightsError, match=re.escape(f"{tmp_path}: test weights is not a file")):
        safe_load(tmp_path, "test weights")
    for i, data in enumerate((b"garbage", b"", b"PK\x03\x04 truncated zip")):
        corrupt = tmp_path / f"corrupt{i}.pt"
        corrupt.write_bytes(data)
        with pytest.raises(WeightsError, match=re.escape(f"{corrupt}: cannot load test weights: corrupt")) as e:
            safe_load(corrupt, "test weights")
        assert "\n" not in str(e.value)
    pickled = tmp_path / "pickled.pt"
    torch.save({"w": torch.zeros(2), "obj": _Pickled()}, pickled)
    with pytest.raises(WeightsError, match=re.escape(f"{pickled}: test weights holds non-tensor objects "
                                                     f"({__name__}._Pickled)")) as e:
        safe_load(pickled, "test weights")
    assert "\n" not in str(e.value)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3)}, good)
    assert safe_load(good, "test weights")["w"].tolist() == [0, 1, 2]


def test_as_state_dict(tmp_path):
    sd = {"w": torch.zeros(1)}
    assert as_state_dict({"state_dict": sd}, tmp_path, "x") is sd
    with pytest.raises(WeightsError, match=r"x: expected a state dict, got list"):
        as_state_dict([1], tmp_path, "x")
    with pytest.raises(WeightsError, match=r"'n' is int"):
        as_state_dict({"w": torch.zeros(1), "n": 3}, tmp_path, "x")


def test_model_checkpoint_round_trip_and_legacy_format(tmp_path):
    torch.manual_seed(0)
    model = HFNet(SMALL).eval()
    path = save_hfnet(tmp_path / "m.pt", model)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["model"] == "hfnet" and raw["conf"] == dataclasses.asdict(SMALL)
    x = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        expected = model(x)["global_descriptor"]
        torch.testing.assert_close(load_hfnet(path)(x)["global_descriptor"], expected)
        # the format of the shipped student (and of checkpoints written before visloc-model)
        legacy = tmp_path / "legacy.pt"
        torch.save({"format": "visloc-hfnet", "conf": raw["conf"], "state_dict": raw["state_dict"]}, legacy)
        torch.testing.assert_close(load_hfnet(legacy)(x)["global_descriptor"], expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temporary left


def test_checkpoint_of_another_model_is_refused(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class TinyConf:
        width: int = 3

    class Tiny(nn.Module):
        def __init__(self, conf: TinyConf) -> None:
            super().__init__()
            self.conf = conf
            self.lin = nn.Linear(conf.width, 1)

    path = save_model(tmp_path / "tiny.pt", "tiny", Tiny(TinyConf(4)))
    assert build_model(load_model_record(path, "tiny"), TinyConf, Tiny).lin.in_features == 4
    with pytest.raises(WeightsError, match=re.escape(f"{path}: a checkpoint of model 'tiny', expected 'hfnet'")):
        load_hfnet(path)
    with pytest.raises(TypeError, match="no dataclass 'conf'"):
        save_model(tmp_path / "x.pt", "x", nn.Linear(2, 2))



def test_halve_checkpoint_stores_float16_and_loads_into_the_float32_model(tmp_path):
    from dataclasses import dataclass

    from visloc.weights.checkpoint import halve_checkpoint

    @dataclass(frozen=True)
    class BnConf:
        width: int = 3

    class Bn(nn.Module):
        def __init__(self, conf: BnConf) -> None:
            super().__init__()
            self.conf = conf
            self.lin = nn.Linear(conf.width, 2)
            self.bn = nn.BatchNorm1d(2)

    torch.manual_seed(0)
    net = Bn(BnConf())
    net.bn.num_batches_tracked.fill_(7)
    full = save_model(tmp_path / "full.pt", "bn", net, extras={"note": "x"})
    half = halve_checkpoint(full, tmp_path / "half.pt", "bn")
    rec = load_model_record(half, "bn")
    assert rec.state_dict["lin.weight"].dtype == torch.float16
    assert rec.state_dict["bn.num_batches_tracked"].dtype == torch.int64
    assert rec.state_dict["bn.num_batches_tracked"].item() == 7 and rec.extras == {"note": "x"}
    back = build_model(rec, BnConf, Bn)
    assert back.lin.weight.dtype == torch.float32
    assert torch.equal(back.lin.weight, net.lin.weight.half().float())
    assert not torch.equal(back.lin.weight, net.lin.weight)  # rounded, so the comparison above means something
    with pytest.raises(WeightsError, match="expected 'other'"):
        halve_checkpoint(full, tmp_path / "x.pt", "other")
    assert not (tmp_path / "x.pt").exists()

def test_records_and_preprocessing():
    rgb = records.IMAGENET_RGB
    assert rgb.mean == (0.485, 0.456, 0.406) and rgb.std == (0.229, 0.224, 0.225)
    gray = records.IMAGENET_GRAY
    assert gray.colour == "gray" and gray.mean == pytest.approx((0.449,)) and gray.std == pytest.approx((0.226,))
    student = records.WEIGHTS["hfnet-default"]
    assert student.home == "visloc" and student.preprocessing is not None
    assert student.preprocessing.mean == gray.mean and student.preprocessing.divisibility == 8
    # HF-Net normalises with the record's numbers (no copy of the constants in models/)
    assert HFNet(SMALL).mean_std.tolist() == pytest.approx([gray.mean[0], gray.std[0]])
    assert records.Preprocessing("rgb").normalisation() == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3 value"):
        records.Preprocessing("rgb", mean=(0.5,))


def test_default_student_is_checked_against_its_record(monkeypatch):
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no default student shipped")
    assert records.sha256_of(DEFAULT_WEIGHTS) == records.WEIGHTS["hfnet-default"].sha256
    assert records.resolve_weights("hfnet-default") == DEFAULT_WEIGHTS
    rec = records.WEIGHTS["hfnet-default"]
    monkeypatch.setitem(records.WEIGHTS, "hfnet-default", dataclasses.replace(rec, sha256="0" * 64))
    with pytest.raises(WeightsError, match=re.escape(str(DEFAULT_WEIGHTS)) + r": sha256 .* 'hfnet-default'"):
        resolve_hfnet(None)
