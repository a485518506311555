"""The learnable EST layer: its fitted init, exact values on a hand-made window, gradients, no mutation.

The registry contract (shapes, shift invariance, batching, devices) runs in test_representations_contract.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visloc.conf import ConfError
from visloc.events import EventStream
from visloc.events.est import EST, FIT_GRID, ESTConf, KernelMLP, TrilinearKernel
from visloc.registry import REPRESENTATIONS

#: the largest |MLP - trilinear| on [-1, 1] the fitted init reaches for these bin counts (seed 0)
FIT_TOL = 0.01
SIZE = (3, 2)  # (W, H)


def _stream(t, x, y, p, size=SIZE, origin_us=0) -> EventStream:
    return EventStream(np.asarray(t, np.int64), np.asarray(x, np.int16), np.asarray(y, np.int16),
                       np.asarray(p, np.int8), size, origin_us)


@pytest.fixture
def window() -> EventStream:
    """Five events at 1e12 + [0, 250, 500, 500, 1000] µs: t* = [0, 0.25, 0.5, 0.5, 1]."""
    t0 = 10**12
    return _stream([t0, t0 + 250, t0 + 500, t0 + 500, t0 + 1000], [0, 2, 1, 2, 2], [0, 1, 1, 1, 1],
                   [1, 1, -1, 1, 1], origin_us=1_500_000_000_000_000)


def _by_hand() -> torch.Tensor:
    """``[2B, H, W]`` for ``window`` with B = 3 (centres 0, 0.5, 1) and the trilinear kernel.

    t* k(t* - c_i): the event at t* = 0 adds 0; t* = 0.25 adds 0.25 * 0.5 to bins 0 and 1; t* = 0.5 adds
    0.5 to bin 1; t* = 1 adds 1 to bin 2. Channels 0-2 are the negative events', 3-5 the positive ones'.
    """
    out = torch.zeros(6, 2, 3)
    out[1, 1, 1] = 0.5  # the negative event at t* = 0.5, pixel (x=1, y=1)
    out[3, 1, 2] = out[4, 1, 2] = 0.125  # positive, t* = 0.25, pixel (2, 1)
    out[4, 1, 2] += 0.5  # positive, t* = 0.5, pixel (2, 1)
    out[5, 1, 2] = 1.0  # positive, t* = 1, pixel (2, 1)
    return out


@pytest.mark.parametrize("bins", [2, 3, 9])
def test_fitted_kernel_matches_trilinear(bins):
    est = EST(ESTConf(bins=bins))
    grid = torch.linspace(-1, 1, FIT_GRID)
    with torch.no_grad():
        error = (est.kernel(grid) - TrilinearKernel(bins)(grid)).abs()
    assert float(error.max()) <= FIT_TOL and float(error.max()) == pytest.approx(est.kernel_fit_error)
    assert est.kernel_fit_error <= FIT_TOL
    assert isinstance(est.kernel, KernelMLP) and [m.out_features for m in est.kernel.mlp if
                                                  isinstance(m, torch.nn.Linear)] == [30, 30, 1]
    unfitted = EST(ESTConf(bins=bins, fit_steps=0))
    assert unfitted.kernel_fit_error > 10 * FIT_TOL  # the fit, not the random init, gives the kernel


def test_exact_kernel_gives_the_hand_computed_grid(window):
    est = EST(ESTConf(bins=3), kernel=TrilinearKernel(3))
    out = est(window)
    assert out.shape == (6, 2, 3) and out.dtype == torch.float32
    assert torch.equal(out, _by_hand())
    assert torch.equal(est(window.shifted(-123_456)), out)  # times relative to the window's start


def test_fitted_init_is_the_hand_computed_grid_within_its_error(window):
    est = EST(ESTConf(bins=3))
    with torch.no_grad():
        out = est(window)
    # each cell sums t* k(.) over its events: at most (sum of t*) * the fit's error
    torch.testing.assert_close(out, _by_hand(), rtol=0, atol=2 * est.kernel_fit_error)


def test_gradients_reach_the_kernel(window):
    est = REPRESENTATIONS.build("est", ["bins=3"])
    other = _stream([0, 10, 40], [0, 1, 2], [0, 1, 0], [-1, 1, 1])
    out = est.batch([window, other])
    assert out.shape == (2, 6, 2, 3) and out.requires_grad
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    for name, param in est.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_input_stream_unchanged():
    rng = np.random.default_rng(0)
    arrays = {"t": np.sort(rng.integers(0, 5000, 200)).astype(np.int64), "x": rng.integers(0, 3, 200).astype(np.int16),
              "y": rng.integers(0, 2, 200).astype(np.int16), "p": rng.choice(np.array([-1, 1], np.int8), 200)}
    before = {k: (v.tobytes(), v.flags.writeable) for k, v in arrays.items()}
    stream = EventStream(arrays["t"], arrays["x"], arrays["y"], arrays["p"], SIZE)  # shares their memory
    est = EST(ESTConf(bins=3))
    est.batch([stream, stream.slice_index(10, 50)], [None, (int(stream.t[10]), int(stream.t[-1]))]).sum().backward()
    assert {k: (v.tobytes(), v.flags.writeable) for k, v in arrays.items()} == before


def test_equal_timestamps_and_empty_windows_give_zeros():
    est = EST(ESTConf(bins=3))
    same = _stream([7, 7, 7], [0, 1, 1], [0, 1, 1], [1, -1, -1])
    with torch.no_grad():
        out, wider = est(same), est(same, t_range=(0, 7))  # wider: t* = 1, the events reach the last bin
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros(6, 2, 3))  # t* = 0 for every event
    assert torch.isfinite(wider).all() and float(wider[2].sum() + wider[5].sum()) > 2.9
    assert torch.equal(est(same.slice_index(1, 1)), torch.zeros(6, 2, 3))


def test_conf_channels_and_registry():
    with pytest.raises(ConfError, match="est.bins: must be >= 2"):
        REPRESENTATIONS.conf("est", ["bins=1"])
    with pytest.raises(ConfError):
        REPRESENTATIONS.conf("est", ["bin=3"])  # a typo is an error
    est = REPRESENTATIONS.build("est", ["bins=3"])
    spec = est.input_spec()
    assert isinstance(est, EST) and est.name == "est" and est.channels == 6 and est.mass is None
    assert (spec.kind, spec.channels, spec.representation, spec.bins) == ("events", 6, "est", 3)
    assert all(p.requires_grad for p in est.parameters())


def test_construction_is_seeded_and_leaves_the_global_generator():
    state = torch.get_rng_state()
    a, b = EST(ESTConf(bins=3, seed=5, fit_steps=50)), EST(ESTConf(bins=3, seed=5, fit_steps=50))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    next(iter(a.parameters())).data.add_(1.0)  # training one copy leaves the cached fit alone
    c = EST(ESTConf(bins=3, seed=5, fit_steps=50))
    assert all(torch.equal(x, y) for x, y in zip(b.state_dict().values(), c.state_dict().values(), strict=True))


def test_device_other_than_the_parameters_is_an_error(window):
    est = EST(ESTConf(bins=2, fit_steps=0))
    with pytest.raises(ValueError, match=r"device: meta given, but the EST's parameters are on cpu"):
        est(window, device="meta")
