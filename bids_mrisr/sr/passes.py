"""One batch of slices through the network, with MoE expert skipping (the loops over views,
passes and planes are in :mod:`bids_mrisr.sr.views`).

For every slice the condition stack (2m+1 neighbours) goes through the network once per
sampling step, tile by tile under a memory plan; a teacher's gates are routed once per batch or
tile and experts whose gate stays below the skip threshold everywhere in it are not run. Noise
comes from one generator per (seed, pass, plane, slice, sample), so batching and tiling do not
change which noise a slice sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr import slicing
from bids_mrisr.sr.acquisition import pass_noise_sigma
from bids_mrisr.sr.acquisition_input import PassAcquisition
from bids_mrisr.sr.diffusion.sampler import CLIP_RESIDUAL, ddim_sample, randn
from bids_mrisr.sr.diffusion.schedule import NoiseSchedule
from bids_mrisr.sr.networks.config import MEAN_TIMESTEP, SCAN_FEATURES
from bids_mrisr.sr.planning import Plan

Arrays = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
"""One batch's residual mean, its std over draws (N > 1) and its fused gates (teacher)."""
Region = tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice], torch.Tensor | None]
"""One network call's window, the core it writes, the core inside the window, its blend weight."""
Routed = tuple[torch.Tensor | None, list[int] | None, int]
"""A region's gates, the experts run on it (None: all) and how many were skipped."""


@dataclass
class Counter:
    """Progress ticks (one per network step of a batch) and expert evaluations of a run."""

    total: int
    progress: Callable[[int, int], None] | None = None
    done: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"skipped": 0, "evaluated": 0})

    def tick(self, *_: Any) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def count(self, batch: int, experts: int, skipped: int) -> None:
        self.stats["skipped"] += batch * skipped
        self.stats["evaluated"] += batch * (experts - skipped)


@dataclass(frozen=True)
class Estimate:
    """How the output estimate is made: draws, steps per draw, eta, and its name."""

    direct: bool
    """A posterior-mean regressor: one deterministic call, no sampler."""
    n: int
    steps: int
    eta: float
    name: str


@dataclass(frozen=True)
class Sampling:
    """What every batch of one run shares: the network and how it is sampled."""

    model: torch.nn.Module
    device: torch.device
    steps: int
    eta: float
    n: int
    """Draws per slice (their mean is the estimate; N > 1 also gives a std)."""
    k: int
    """Experts (teacher), 0 for the student."""
    scale: float
    """The network's residual scale."""
    context: int
    """m: the condition stack holds 2m+1 neighbouring slices."""
    seed: int
    gate_skip_threshold: float
    direct: bool
    """A posterior-mean regressor: one deterministic call, no sampler."""
    schedule: NoiseSchedule
    counter: Counter


@dataclass(frozen=True)
class Batch:
    """One batch of slices of one plane in one pass, and its condition stack."""

    cond: torch.Tensor
    sl: range
    plane: str
    plan: Plan
    pass_index: int = 0
    acquisition: torch.Tensor | None = None
    """[1, F]: the pass's acquisition code (conditioned networks)."""


@dataclass(frozen=True)
class Geometry:
    """The run's passes: what is known of each one's acquisition (its axis included), its
    planes, their plans, and the width of the acquisition code the network takes (0: blind)."""

    acquisitions: tuple[PassAcquisition, ...]
    planes: list[tuple[str, ...]]
    plans: dict[tuple[int, str], Plan]
    code_width: int = 0
    noise_read: dict[int, float] = field(default_factory=dict)
    """The noise level each pass's input showed (networks told it), for the sidecar."""

    def code(self, i: int, current: np.ndarray) -> torch.Tensor | None:
        """Pass ``i``'s acquisition code; ``current``: the volume that pass restores. A
        network told what its input shows reads the noise from ``current`` (after the passes
        before it) along the pass's axis, on the grid of the axes still coarse (those of the
        passes still to come), and counts those axes, as its training simulated them."""
        if not self.code_width:
            return None
        value = self.acquisitions[i]
        if self.code_width != SCAN_FEATURES or value.axis is None:
            return value.code(self.code_width)
        noise = self.noise_read.get(i)
        if noise is None:
            noise = self.noise_read[i] = pass_noise_sigma(current, value.axis,
                                                          self.still_coarse(i))
        return value.code(self.code_width, noise, len(self.still_coarse(i)))

    def still_coarse(self, i: int) -> dict[int, float]:
        """The axes still coarse when pass ``i`` runs (those of the passes after it), with
        their factors."""
        return {v.axis: v.factor for v in self.acquisitions[i + 1:]
                if v.axis is not None and v.factor is not None}

    @property
    def axes(self) -> list[int | None]:
        """The axis each pass restores (None: one pass over the planes as given)."""
        return [value.axis for value in self.acquisitions]


def _seed_for(seed: int, plane: str, index: int, sample: int, pass_index: int = 0) -> int:
    """Independent, order-free stream for one (pass, plane, slice, sample)."""
    key = [seed & 0xFFFFFFFF, slicing.PLANE_IDS[plane], index, sample]
    ss = np.random.SeedSequence(key + ([pass_index] if pass_index else []))
    return int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


def _active(gates: torch.Tensor, k: int, threshold: float) -> tuple[list[int] | None, int]:
    """Experts worth running on this batch/tile (max gate >= threshold) and the skip count."""
    peak = gates.amax(dim=(0, 2, 3))
    keep = [i for i in range(k) if float(peak[i]) >= threshold]
    if not keep:
        keep = [int(peak.argmax())]
    return (None if len(keep) == k else keep), k - len(keep)


def _effective(gates: torch.Tensor, active: list[int] | None) -> torch.Tensor:
    """Gates as actually applied: skipped experts zeroed, the rest renormalised."""
    if active is None:
        return gates
    mask = torch.zeros(gates.shape[1], device=gates.device, dtype=gates.dtype)
    mask[active] = 1
    g = gates * mask.view(1, -1, 1, 1)
    return g / g.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _regions(batch: Batch, h: int, w: int, device: torch.device) -> list[Region] | None:
    """The batch's network calls (None: untiled), each with its blend weight on ``device``."""
    plan = batch.plan
    tiles = slicing.plan_tiles(h, w, plan.tile, plan.overlap, plan.halo, plan.align)
    if tiles is None:
        return None
    return [(t.window, t.core, t.inner, t.weight.to(device)) for t in tiles]


def _route(run: Sampling, cond: torch.Tensor, regions: list[Region],
           ) -> tuple[list[Routed], torch.Tensor | None]:
    """Route once per batch/tile (gates depend on the condition only): each region's gates and
    active experts, and the fused gate map as applied (unnormalised over tiles)."""
    b, _, h, w = cond.shape
    k = run.k
    per_region: list[Routed] = []
    gate_map = torch.zeros((b, k, h, w), device=run.device) if k else None
    for (wy, wx), (cy, cx), (iy, ix), wt in regions:
        g = None
        active, skipped = None, 0
        if k:
            with devices.autocast(run.device):
                g = run.model.route(cond[:, :, wy, wx]).float()
            active, skipped = _active(g[:, :, iy, ix], k, run.gate_skip_threshold)
            eff = _effective(g[:, :, iy, ix], active)
            gate_map[:, :, cy, cx] += eff if wt is None else eff * wt
        per_region.append((g, active, skipped))
    return per_region, gate_map


def _network(run: Sampling, batch: Batch, regions: list[Region] | None,
             routed: list[Routed], wsum: torch.Tensor | None,
             ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch's v (or mean) prediction as a function of (x_t, t), tile by tile."""
    cond = batch.cond
    b = cond.shape[0]
    extra = ({} if batch.acquisition is None
             else {"acquisition": batch.acquisition.expand(b, -1)})
    ac = devices.autocast(run.device)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if regions is None:
            g, active, skipped = routed[0]
            run.counter.count(b, run.k, skipped)
            with ac:
                return run.model(x_t, cond, t, gates=g, active_experts=active, **extra).float()
        v = torch.zeros_like(x_t)
        for ((wy, wx), (cy, cx), (iy, ix), wt), (g, active, skipped) in zip(
            regions, routed, strict=True
        ):
            run.counter.count(b, run.k, skipped)
            with ac:
                vt = run.model(x_t[:, :, wy, wx], cond[:, :, wy, wx], t, gates=g,
                               active_experts=active, **extra)
            v[:, :, cy, cx] += vt[:, :, iy, ix].float() * wt
        return v / wsum

    return model_fn


def _draws(run: Sampling, batch: Batch,
           model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """The residual's mean (and std over N > 1 draws) from seeded DDIM sampling."""
    b, _, h, w = batch.cond.shape
    draws = []
    for s in range(run.n):
        gens = [torch.Generator().manual_seed(
            _seed_for(run.seed, batch.plane, i, s, batch.pass_index)) for i in batch.sl]
        x_T = randn((b, 1, h, w), gens, run.device)
        x0 = ddim_sample(
            model_fn,
            steps=run.steps,
            eta=run.eta,
            generator=gens,
            x_T=x_T,
            device=run.device,
            clip_x0=CLIP_RESIDUAL * run.scale,
            callback=run.counter.tick,
            schedule=run.schedule,
        )
        draws.append(x0[:, 0].float().cpu())
    stack = torch.stack(draws)
    mean = stack.mean(dim=0).numpy()
    std = stack.std(dim=0, unbiased=True).numpy() if run.n > 1 else None
    return mean, std


def sample_batch(run: Sampling, batch: Batch) -> Arrays:
    """Residual mean (and std over draws) plus fused gates for one batch of slices."""
    b, _, h, w = batch.cond.shape
    regions = _regions(batch, h, w, run.device)
    full = (slice(None), slice(None))
    routed, gate_map = _route(run, batch.cond, regions or [(full, full, full, None)])
    wsum = None
    if regions is not None:
        wsum = torch.zeros((h, w), device=run.device)
        for _, (cy, cx), _, wt in regions:
            wsum[cy, cx] += wt
        if gate_map is not None:
            gate_map /= wsum
    model_fn = _network(run, batch, regions, routed, wsum)
    if run.direct:  # one deterministic pass of a mean regressor
        t = torch.full((b,), float(MEAN_TIMESTEP), device=run.device)
        x0 = model_fn(torch.zeros((b, 1, h, w), device=run.device), t)
        x0 = x0.clamp(-CLIP_RESIDUAL * run.scale, CLIP_RESIDUAL * run.scale)
        run.counter.tick()
        mean, std = x0[:, 0].float().cpu().numpy(), None
    else:
        mean, std = _draws(run, batch, model_fn)
    return mean, std, gate_map.cpu().numpy() if gate_map is not None else None
