"""Memory and tile planning: slices per batch and, under a memory budget, in-plane tiles.

What no tiling reduces (the process, whole volumes on the output grid) is modelled in
:mod:`bids_mrisr.memory`, which the command line's pre-check shares; this module adds the
network's activations per pixel and turns what is left of the budget into a batch size and,
when one slice does not fit, a tile size on the networks' coarsest internal grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bids_mrisr import memory
from bids_mrisr.sr import device as devices
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.options import SRError, SROptions

DEFAULT_CPU_BUDGET_GB = 2.0
"""Activation budget used to pick a batch size on the CPU when no --mem limit is given."""
MIN_TILE = 32
TILE_OVERLAP = 16
"""Width of the blended strip between neighbouring tile cores."""
MIN_HALO = 16
"""Context each tile's network call sees beyond its core (in px, rounded up to the patch grid)."""


@dataclass
class Plan:
    """How one plane of one pass is cut: slices per batch, and tiles (None: whole slices)."""

    batch_size: int
    tile: int | None = None
    overlap: int = TILE_OVERLAP
    halo: int = 0
    align: int = 1


def _grid_align(config: ModelConfig) -> int:
    """Tiles start on the networks' coarsest internal grid (U-Net pooling after the stem, router
    patches and attention windows), so overlapping tiles see the same grids."""
    return int(config.tile_alignment)


def _halo(align: int) -> int:
    """Context beyond a tile's core, a whole number of grid cells so windows stay aligned."""
    return -(-MIN_HALO // align) * align


def _smallest_window(config: ModelConfig) -> int:
    """Side of the smallest network call a tiled run can make: one grid cell plus halos."""
    align = _grid_align(config)
    return max(MIN_TILE, align) + 2 * _halo(align)


def with_tiles(plan: Plan, config: ModelConfig, core: int) -> Plan:
    """``plan`` cut into tiles with cores of about ``core`` px, on the networks' grid."""
    align = _grid_align(config)
    plan.align = align
    plan.halo = _halo(align)
    # A whole number of grid cells, at least one (and at least MIN_TILE px).
    plan.tile = max(-(-MIN_TILE // align) * align, core // align * align)
    plan.overlap = min(TILE_OVERLAP, plan.tile // 2)
    return plan


def activation_bytes_per_pixel(config: ModelConfig) -> int:
    """Rough peak activation bytes per in-plane pixel of one slice (a planning heuristic).

    U-Net: the skip tensors of every level plus a few working tensors, at 1/4 the pixels per
    level down; experts run one after another. Router: token features and windowed attention.
    A factor 2 covers allocator slack and the conv workspace.
    """
    ch = max(sum(base * mu * (rb + 7) / 4**lvl for lvl, mu in enumerate(mults))
             for base, mults, rb in config.unet_shapes)
    ch += 3 * config.in_condition_channels + 8
    if config.kind == "teacher":
        ps, emb = config.patch_sizes, config.embed_dim
        tokens_pp = sum(1.0 / p**2 for p in ps)
        ch += tokens_pp * emb * 12 + 2 * config.num_experts
        win = config.window_size
        if win > 0:
            n_tok = sum((win * ps[0] // p) ** 2 for p in ps)
            ch += n_tok * n_tok * config.num_heads / (win * ps[0]) ** 2
    return int(4 * ch * 2)


def plan_memory(
    config: ModelConfig,
    shape: tuple[int, int, int],
    volume_shape: tuple[int, ...],
    options: SROptions,
    device: torch.device,
    param_bytes: int,
    views: int = 1,
) -> Plan:
    """Pick slices per batch and (under a memory budget) an in-plane tile size (``views``:
    flipped views of the volume restored one after another)."""
    num, h, w = shape
    bpp = activation_bytes_per_pixel(config)
    if options.max_memory_gb is not None:
        k = config.num_experts if config.kind == "teacher" else 0
        extra = k + (1 if options.num_samples > 1 else 0)  # gates, std
        extra += memory.VIEW_VOLUMES if views > 1 else 0  # a flipped copy, the views' mean
        fixed = memory.untileable_bytes(int(np.prod(volume_shape)), extra) + param_bytes
        budget = options.max_memory_gb * 1e9 - fixed
        smallest = bpp * _smallest_window(config) ** 2
        if budget < smallest:
            raise SRError(
                f"--mem {options.max_memory_gb:g} GB is too small for this volume even in the "
                f"smallest tiles: it needs about {(fixed + smallest) / 1e9:.2f} GB"
            )
    else:
        free = devices.free_memory_bytes(device)
        budget = 0.5 * free if free is not None else DEFAULT_CPU_BUDGET_GB * 1e9
    px = max(1, int(budget // bpp))
    if options.batch_size is not None:
        if options.batch_size < 1:
            raise SRError(f"batch size must be >= 1, got {options.batch_size}")
        batch = options.batch_size
    else:
        batch = int(max(1, min(num, px // (h * w))))
    plan = Plan(batch)
    if options.max_memory_gb is not None and batch * h * w > px:
        with_tiles(plan, config, int(math.sqrt(px / batch)) - 2 * _halo(_grid_align(config)))
    return plan
