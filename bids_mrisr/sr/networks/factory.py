"""Build a network from its config, and measure its size and cost."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.moe import MoETeacher
from bids_mrisr.sr.networks.student import StudentDenoiser


def build_model(config: ModelConfig) -> nn.Module:
    """The teacher or the student described by ``config`` (random init, train mode)."""
    if config.kind == "teacher":
        return MoETeacher(config)
    if config.kind == "student":
        return StudentDenoiser(config)
    raise ValueError(f"unknown model kind {config.kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def estimate_flops_per_pixel(
    model: nn.Module, H: int = 256, W: int = 256, include_router: bool = False
) -> float:
    """FLOP (multiply-add = 2) per output pixel of one denoiser evaluation, batch 1.

    The teacher's gates are precomputed (inference routes once per slice, not per step), so by
    default this is the per-step cost of all experts; ``include_router`` instead returns the
    one-off cost of routing (encoder + router + gate upsampling) per pixel.
    """
    cfg = model.config
    cond = torch.zeros(1, cfg.in_condition_channels, H, W)
    x = torch.zeros(1, 1, H, W)
    t = torch.full((1,), 500.0)
    gates = model.route(cond)
    counter = FlopCounterMode(display=False)
    with counter:
        if include_router:
            model.route(cond)
        else:
            model(x, cond, t, gates=gates)
    return counter.get_total_flops() / (H * W)
