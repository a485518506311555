"""The learnable EST layer (Gehrig et al., ICCV 2019, "Event Spike Tensor"), registered as ``est`` (kind ``events``).

An ``nn.Module`` with the interface of the other representations (``events.representations``):
``est(events) -> [2B, H, W]`` and ``est.batch(windows) -> [N, 2B, H, W]``, float32, for ``B`` bins. It
never writes into its input, and its times are relative to each window like theirs: each window's
``t_range = (t_start, t_end)`` (default: its first and last events' times) gives the normalised time
``t* = (t - t_start) / (t_end - t_start)`` in ``[0, 1]``, so a constant shift of ``t`` changes nothing.

Each event adds, to bin ``i`` (``i = 0 .. B - 1``, centre ``c_i = i / (B - 1)``) of its pixel and polarity,
``t* k(t* - c_i)`` with ``k`` the kernel: an MLP over one scalar, ``[1, 30, 30, 1]`` with LeakyReLU
(slope 0.1) between the layers, as EST's classifier builds it. The output stacks the polarities as EST
does: channels ``0 .. B - 1`` are the negative events' bins, ``B .. 2B - 1`` the positive ones' (the
``histogram`` and ``time-surface`` representations put the positive channel first).

The kernel starts as a fit of the trilinear kernel ``k(u) = max(0, 1 - (B - 1) |u|)`` for the chosen
``B`` (``TrilinearKernel``), so that before training the layer is a voxel grid whose events are weighted
by ``t*`` (the trilinear kernels of the bins sum to 1 at every ``t*``). The fit follows EST's
``ValueLayer.init_kernel`` (Adam, lr 1e-2, 2000 samples of ``U(-1, 1)`` per step, 1000 steps, squared
error) with a cosine decay of the learning rate: the largest error on ``[-1, 1]`` is below 0.01 for
``B`` = 2, 3, 5, 9 (without the decay, up to 0.025 on those), and it grows as the kernel narrows (0.017
at ``B = 12``, 0.038 at 16); ``EST.kernel_fit_error`` records it. It is seeded and
deterministic, touches no global random state, and is computed once per conf in a process.

Differences from the reference code (uzh-rpg/rpg_event_representation_learning ``utils/models.py``), on
purpose: time is normalised from each window's own start (EST divides raw ``t`` by its maximum, so
absolute timestamps such as MVSEC's collapse to about 1); polarity comes from the stream's ``{-1, +1}``
contract (EST maps ``(p + 1) / 2``, wrong for ``{0, 1}`` input); and the kernel is fitted for the chosen
``B`` (EST loads a file fitted for ``B = 9`` whatever ``B`` is). A window whose events share one timestamp
(``t_end == t_start``) has ``t* = 0`` for every event, hence gives zeros, as does an empty window: the
weight ``t*`` makes a window's first event contribute nothing, in every window.

Parameters stay where the module is (``.to(device)``); ``batch(..., device=None)`` builds the output
there, and a ``device`` other than the parameters' is an error rather than a silent copy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.events.representations import Device, EventBatch, Mass, TimeRange, TimeRanges, Windows, gather_windows
from visloc.events.stream import EventStream
from visloc.registry import REPRESENTATIONS
from visloc.types import InputSpec

#: points of the grid on ``[-1, 1]`` on which ``EST.kernel_fit_error`` is measured
FIT_GRID = 2001


@dataclass(frozen=True)
class ESTConf:
    """EST's bins and kernel, and how the kernel's trilinear initialisation is fitted.

    Attributes:
        bins: ``B`` temporal bins per polarity (``>= 2``: the bin centres are ``i / (B - 1)``); the output
            has ``2B`` channels.
        hidden: the kernel MLP's hidden widths (EST's ``[1, 30, 30, 1]`` is ``(30, 30)``).
        negative_slope: of the LeakyReLU between its layers.
        fit_steps: Adam steps of the trilinear fit (0: leave the MLP at its seeded random init).
        fit_lr: the fit's initial learning rate (cosine-decayed to 0).
        fit_samples: samples of ``U(-1, 1)`` drawn per step.
        seed: seeds the MLP's initial weights and the fit's samples.
    """

    bins: int = 9
    hidden: tuple[int, ...] = (30, 30)
    negative_slope: float = 0.1
    fit_steps: int = 1000
    fit_lr: float = 1e-2
    fit_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.bins < 2:
            raise ConfError(f"est.bins: must be >= 2 (bin centres i / (bins - 1)), got {self.bins}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfError(f"est.hidden: expected one or more widths >= 1, got {self.hidden}")
        if not self.negative_slope >= 0:
            raise ConfError(f"est.negative_slope: must be >= 0, got {self.negative_slope}")
        ranges.at_least(self, 0, "negative_slope", "fit_steps")
        ranges.at_least(self, 1, "fit_samples")
        ranges.above(self, 0, "fit_lr")

    @property
    def channels(self) -> int:
        """``C = 2B``."""
        return 2 * self.bins

    @property
    def mass(self) -> Mass:
        """Nothing is conserved (the kernel is learned)."""
        return None

    def input_spec(self) -> InputSpec:
        """What an extractor over this representation declares."""
        return InputSpec(kind="events", channels=self.channels, representation="est", bins=self.bins)


class TrilinearKernel(nn.Module):
    """``k(u) = max(0, 1 - (B - 1) |u|)``, elementwise: the fit's target, and an exact kernel for tests."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins: must be >= 2, got {bins}")
        self.bins = bins

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``k(u)``, same shape as ``u``."""
        return (1.0 - (self.bins - 1) * u.abs()).clamp(min=0.0)


class KernelMLP(nn.Module):
    """An MLP over one scalar, applied elementwise: ``[...] -> [...]`` (EST's ``ValueLayer``).

    Args:
        hidden: hidden widths; the layers are ``[1, *hidden, 1]``.
        negative_slope: of the LeakyReLU after every layer but the last.
    """

    def __init__(self, hidden: Sequence[int] = (30, 30), negative_slope: float = 0.1) -> None:
        super().__init__()
        widths = [1, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.LeakyReLU(negative_slope))
        self.mlp = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``k(u)``, same shape as ``u``."""
        return self.mlp(u.unsqueeze(-1)).squeeze(-1)


def _fit(kernel: KernelMLP, bins: int, steps: int, lr: float, samples: int, seed: int) -> None:
    target = TrilinearKernel(bins)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.Adam(kernel.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(steps, 1))
    for _ in range(steps):
        u = torch.rand(samples, generator=gen) * 2.0 - 1.0
        loss = (kernel(u) - target(u)).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        schedule.step()


@functools.lru_cache(maxsize=16)
def _fitted(bins: int, hidden: tuple[int, ...], slope: float, steps: int, lr: float, samples: int, seed: int
            ) -> tuple[dict[str, torch.Tensor], float]:
    """The fitted kernel's state dict (CPU) and its largest error on the grid; the caller clones it."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)  # nn.Linear draws its initial weights from the global generator
        kernel = KernelMLP(hidden, slope)
        _fit(kernel, bins, steps, lr, samples, seed)
    with torch.no_grad():
        grid = torch.linspace(-1.0, 1.0, FIT_GRID)
        error = float((kernel(grid) - TrilinearKernel(bins)(grid)).abs().max())
    return {k: v.detach().clone() for k, v in kernel.state_dict().items()}, error


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class EST(nn.Module):
    """The learnable EST layer: event windows -> ``[N, 2B, H, W]`` (module docstring).

    Args:
        conf: bins, kernel and fit (``ESTConf``).
        kernel: replaces the fitted MLP (e.g. ``TrilinearKernel(conf.bins)``, the exact voxel-grid kernel);
            None: the MLP fitted to the trilinear kernel.

    Attributes:
        kernel_fit_error: the fitted MLP's largest ``|k - trilinear|`` on ``FIT_GRID`` points of
            ``[-1, 1]`` at construction (NaN when ``kernel`` was given).
    """

    name = "est"

    def __init__(self, conf: ESTConf | None = None, kernel: nn.Module | None = None) -> None:
        super().__init__()
        self.conf = conf if conf is not None else ESTConf()
        c = self.conf
        if kernel is None:
            state, self.kernel_fit_error = _fitted(c.bins, c.hidden, c.negative_slope, c.fit_steps, c.fit_lr,
                                                   c.fit_samples, c.seed)
            with torch.random.fork_rng(devices=[]):  # its random init is overwritten: draw it off the record
                kernel = KernelMLP(c.hidden, c.negative_slope)
            kernel.load_state_dict({k: v.clone() for k, v in state.items()})
        else:
            self.kernel_fit_error = math.nan
        self.kernel = kernel

    @property
    def channels(self) -> int:
        """``C = 2B``."""
        return self.conf.channels

    @property
    def mass(self) -> Mass:
        """Nothing is conserved."""
        return self.conf.mass

    def input_spec(self) -> InputSpec:
        """``InputSpec(kind="events", channels=2B, representation="est", bins=B)``."""
        return self.conf.input_spec()

    def _device(self, device: Device | None) -> torch.device:
        own = next(iter(self.parameters()), None)
        here = own.device if own is not None else torch.device("cpu")
        if device is None:
            return here
        wanted = torch.device(device)
        if not _same_device(wanted, here):
            raise ValueError(f"device: {wanted} given, but the EST's parameters are on {here}; move the module "
                             "(est.to(device)) or leave device=None")
        return here

    def scatter(self, ev: EventBatch) -> torch.Tensor:
        """``[n, 2B, H, W]`` of gathered windows (``events.representations.gather_windows``)."""
        nb, h, w = self.conf.bins, ev.height, ev.width
        span = ev.span[ev.b].double()
        tn = torch.where(span > 0, ev.rel.double() / span.clamp(min=1), torch.zeros_like(span)).float()
        centres = torch.arange(nb, device=tn.device, dtype=torch.float32) / (nb - 1)
        values = tn[:, None] * self.kernel(tn[:, None] - centres)  # [N, B]
        pol = (ev.p > 0).long()  # EST's order: 0 the negative events, 1 the positive ones
        first = ((ev.b * 2 + pol) * nb) * (h * w) + ev.y * w + ev.x  # each event's bin 0
        index = first[:, None] + torch.arange(nb, device=tn.device) * (h * w)
        out = torch.zeros(ev.n * 2 * nb * h * w, dtype=values.dtype, device=tn.device)
        return out.index_add(0, index.flatten(), values.flatten()).view(ev.n, 2 * nb, h, w)

    def batch(self, windows: Windows, t_ranges: TimeRanges = None, device: Device | None = None) -> torch.Tensor:
        """``[N, 2B, H, W]`` of ``N`` windows of one sensor, on the parameters' device (one scatter)."""
        return self.scatter(gather_windows(windows, t_ranges, self._device(device)))

    def forward(self, events: EventStream, t_range: TimeRange | None = None, device: Device | None = None
                ) -> torch.Tensor:
        """``[2B, H, W]`` of one window (``t_range``: see the module docstring)."""
        return self.batch([events], [t_range], device)[0]

    def extra_repr(self) -> str:
        """The bins and the fit's error."""
        return f"bins={self.conf.bins}, kernel_fit_error={self.kernel_fit_error:.3g}"


REPRESENTATIONS.register("est", ESTConf(), EST)

__all__ = ["EST", "FIT_GRID", "ESTConf", "KernelMLP", "TrilinearKernel"]
