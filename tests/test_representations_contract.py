"""Every registered event representation through the same checks (REVIEW.md section 4.2).

A representation registered in ``REPRESENTATIONS`` is tested here the moment it is registered: it
never writes into its input, gives ``[C, H, W]`` with its declared channels and the sensor's size,
finite values, conserves what it declares (``mass``), ignores a constant shift of time, and its
batched form equals its single outputs stacked.

A learned representation (an ``nn.Module``: ``est``) runs an MLP whose float32 matmuls round
differently with the number of rows (the kernels block by size), so its batched form equals the
stacked one within 1e-6 instead of bit for bit; it computes where its parameters are, so the device
check moves a copy of it there.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from visloc.events import EventStream, count_windows
from visloc.registry import REPRESENTATIONS

SIZE = (40, 30)  # (W, H)
#: every registered representation with its default conf, plus the variants whose contract differs
CASES = [(name, ()) for name in REPRESENTATIONS.names()] + [("voxel-grid", ("normalization=tonic",)),
                                                           ("voxel-grid", ("bins=1",)), ("est", ("bins=2",))]
IDS = [name + "".join(f"[{o}]" for o in overrides) for name, overrides in CASES]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _arrays(seed: int = 0, n: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"t": np.sort(rng.integers(0, 200_000, n)).astype(np.int64),  # duplicates included
            "x": rng.integers(0, SIZE[0], n).astype(np.int16), "y": rng.integers(0, SIZE[1], n).astype(np.int16),
            "p": rng.choice(np.array([-1, 1], np.int8), n)}


def _same(a: torch.Tensor, b: torch.Tensor, rep) -> bool:
    """Bit for bit, or within float32 rounding for a learned representation (module docstring)."""
    if isinstance(rep, torch.nn.Module):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        return True
    return torch.equal(a, b)


def _windows(stream: EventStream) -> list[EventStream]:
    """Overlapping count windows, one event alone, and a window whose timestamps are all equal."""
    ws = count_windows(stream, 700, stride=500).events(stream)
    same_t = EventStream(np.full(4, 123, np.int64), np.array([0, 5, 5, 39], np.int16),
                         np.array([0, 7, 7, 29], np.int16), np.array([1, -1, 1, -1], np.int8), SIZE)
    return [*ws, stream.slice_index(17, 18), same_t]


@pytest.fixture(scope="module")
def stream() -> EventStream:
    a = _arrays()
    return EventStream(a["t"], a["x"], a["y"], a["p"], SIZE, origin_us=1_600_000_000_000_000)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def rep(request):
    name, overrides = request.param
    return REPRESENTATIONS.build(name, list(overrides))


def test_input_arrays_unchanged():
    for name, overrides in CASES:
        arrays = _arrays(seed=1)
        before = {k: (v.tobytes(), v.flags.writeable) for k, v in arrays.items()}
        stream = EventStream(arrays["t"], arrays["x"], arrays["y"], arrays["p"], SIZE)  # shares their memory
        rep = REPRESENTATIONS.build(name, list(overrides))
        rep(stream)
        rep.batch(_windows(stream))
        after = {k: (v.tobytes(), v.flags.writeable) for k, v in arrays.items()}
        assert after == before, name


def test_output_shape_and_finite(rep, stream):
    spec = rep.input_spec()
    assert spec.kind == "events" and spec.representation == rep.name and spec.channels == rep.channels
    out = rep(stream)
    assert out.shape == (spec.channels, SIZE[1], SIZE[0]) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    batch = rep.batch(_windows(stream))
    assert batch.shape == (len(_windows(stream)), spec.channels, SIZE[1], SIZE[0])
    assert torch.isfinite(batch).all()
    assert torch.equal(rep(stream.slice_index(5, 5)), torch.zeros(spec.channels, SIZE[1], SIZE[0]))


def test_mass_conserved_where_declared(rep, stream):
    if rep.mass is None:
        pytest.skip(f"{rep.name} declares no conserved mass")
    for w in [stream, *_windows(stream)]:
        out = rep(w).double()
        if rep.mass == "polarity":
            assert float(out.sum()) == pytest.approx(float(w.p.sum()), abs=1e-3)
        elif rep.mass == "count":
            assert float(out.sum()) == len(w)
            assert (float(out[0].sum()), float(out[1].sum())) == (float((w.p > 0).sum()), float((w.p < 0).sum()))
        else:
            pytest.fail(f"{rep.name}: unknown mass {rep.mass!r}")


def test_shift_invariance_in_time(rep, stream):
    shifted = stream.shifted(987_654_321)
    assert torch.equal(rep(shifted), rep(stream))
    moved_origin = EventStream(stream.t, stream.x, stream.y, stream.p, SIZE, origin_us=0)
    assert torch.equal(rep(moved_origin), rep(stream))
    ws = _windows(stream)
    assert torch.equal(rep.batch([w.shifted(-55) for w in ws]), rep.batch(ws))


def test_batched_equals_stacked(rep, stream):
    ws = _windows(stream)
    assert _same(rep.batch(ws), torch.stack([rep(w) for w in ws]), rep)


def test_batch_rejects_mixed_sensors(rep, stream):
    other = EventStream(np.zeros(1, np.int64), np.zeros(1, np.int16), np.zeros(1, np.int16), np.ones(1, np.int8),
                        (8, 8))
    with pytest.raises(ValueError, match="sensor_size"):
        rep.batch([stream, other])


@pytest.mark.parametrize("device", DEVICES)
def test_device_matches_cpu(rep, stream, device):
    ws = _windows(stream)
    there = copy.deepcopy(rep).to(device) if isinstance(rep, torch.nn.Module) else rep
    out = there.batch(ws, device=device)
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), rep.batch(ws), rtol=1e-5, atol=1e-5)
