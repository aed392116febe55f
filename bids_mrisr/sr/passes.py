"""The passes over the volume: batches of slices through the network, with MoE expert skipping.

For every slice the condition stack (2m+1 neighbours) goes through the network once per
sampling step, tile by tile under a memory plan; a teacher's gates are routed once per batch or
tile and experts whose gate stays below the skip threshold everywhere in it are not run. Noise
comes from one generator per (seed, pass, plane, slice, sample), so batching and tiling do not
change which noise a slice sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr import slicing
from bids_mrisr.sr.diffusion.sampler import CLIP_RESIDUAL, ddim_sample, randn
from bids_mrisr.sr.networks.config import MEAN_TIMESTEP
from bids_mrisr.sr.options import SROptions
from bids_mrisr.sr.planning import Plan


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


def sample_batch(
    model: torch.nn.Module,
    cond: torch.Tensor,
    sl: range,
    plane: str,
    plan: Plan,
    scale: float,
    options: SROptions,
    steps: int,
    eta: float,
    n: int,
    k: int,
    device: torch.device,
    stats: dict[str, int],
    tick: Callable[..., None],
    direct: bool = False,
    pass_index: int = 0,
    schedule: Any = None,
    acquisition: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Residual mean (and std over draws) plus fused gates for one batch of slices;
    ``acquisition`` [1, F]: the pass's acquisition code (conditioned networks)."""
    extra = {} if acquisition is None else {"acquisition": acquisition.expand(cond.shape[0], -1)}
    b, _, h, w = cond.shape
    tiles = slicing.plan_tiles(h, w, plan.tile, plan.overlap, plan.halo, plan.align)
    ac = devices.autocast(device)
    full = (slice(None), slice(None))
    regions = (
        [(full, full, full, None)]
        if tiles is None
        else [(t.window, t.core, t.inner, t.weight.to(device)) for t in tiles]
    )
    # Route once per batch/tile: gates depend on the condition only.
    per_region: list[tuple[torch.Tensor | None, list[int] | None, int]] = []
    gate_map = torch.zeros((b, k, h, w), device=device) if k else None
    for (wy, wx), (cy, cx), (iy, ix), wt in regions:
        g = None
        active, skipped = None, 0
        if k:
            with ac:
                g = model.route(cond[:, :, wy, wx]).float()
            active, skipped = _active(g[:, :, iy, ix], k, options.gate_skip_threshold)
            eff = _effective(g[:, :, iy, ix], active)
            gate_map[:, :, cy, cx] += eff if wt is None else eff * wt
        per_region.append((g, active, skipped))
    wsum = None
    if tiles is not None:
        wsum = torch.zeros((h, w), device=device)
        for _, (cy, cx), _, wt in regions:
            wsum[cy, cx] += wt
        if gate_map is not None:
            gate_map /= wsum

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tiles is None:
            g, active, skipped = per_region[0]
            stats["skipped"] += b * skipped
            stats["evaluated"] += b * (k - skipped)
            with ac:
                return model(x_t, cond, t, gates=g, active_experts=active, **extra).float()
        v = torch.zeros_like(x_t)
        for ((wy, wx), (cy, cx), (iy, ix), wt), (g, active, skipped) in zip(
            regions, per_region, strict=True
        ):
            stats["skipped"] += b * skipped
            stats["evaluated"] += b * (k - skipped)
            with ac:
                vt = model(x_t[:, :, wy, wx], cond[:, :, wy, wx], t, gates=g,
                           active_experts=active, **extra)
            v[:, :, cy, cx] += vt[:, :, iy, ix].float() * wt
        return v / wsum

    if direct:  # one deterministic pass of a mean regressor
        t = torch.full((b,), float(MEAN_TIMESTEP), device=device)
        x0 = model_fn(torch.zeros((b, 1, h, w), device=device), t)
        x0 = x0.clamp(-CLIP_RESIDUAL * scale, CLIP_RESIDUAL * scale)
        tick()
        gates = gate_map.cpu().numpy() if gate_map is not None else None
        return x0[:, 0].float().cpu().numpy(), None, gates
    draws = []
    for s in range(n):
        gens = [torch.Generator().manual_seed(_seed_for(options.seed, plane, i, s, pass_index))
                for i in sl]
        x_T = randn((b, 1, h, w), gens, device)
        x0 = ddim_sample(
            model_fn,
            steps=steps,
            eta=eta,
            generator=gens,
            x_T=x_T,
            device=device,
            clip_x0=CLIP_RESIDUAL * scale,
            callback=tick,
            schedule=schedule,
        )
        draws.append(x0[:, 0].float().cpu())
    stack = torch.stack(draws)
    mean = stack.mean(dim=0).numpy()
    std = stack.std(dim=0, unbiased=True).numpy() if n > 1 else None
    gates = gate_map.cpu().numpy() if gate_map is not None else None
    return mean, std, gates
