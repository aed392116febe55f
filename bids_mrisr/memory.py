"""How much memory a run needs at the least, estimated from its output grid before any work.

The SR engine cuts each slice into tiles until the network's activations fit what ``--mem``
leaves (sr/planning.py ``plan_memory``), so what cannot shrink is the process itself and the
whole volumes on the output grid that are alive at once. Measured on this project's CPU machine:
about 0.48 GB of peak RSS for a tiny phantom (interpreter, torch, nipype, the network); for the
192x256x256 grid of ds-real xa30 (restored along three axes, one view), tracemalloc saw at most
5 float32 volumes at once, inside the engine (input, a pass's input and sum, the result) and
while the N4 field is resampled onto the grid; a self-ensemble of two views adds a flipped copy
and the views' sum. A grid is refused only when even the smallest tiles would not fit.
"""

from __future__ import annotations

import os

BASE_GB = 0.5
"""Interpreter, torch, nipype and the network, before any volume."""
WHOLE_VOLUMES = 5
"""float32 volumes on the output grid alive at once at the SR node's peak, with one view."""
VIEW_VOLUMES = 2
"""More volumes for a self-ensemble of flipped views (the default for one thick axis)."""
SMALLEST_TILE_GB = 0.02
"""A batch of one smallest tile of the shipped student (6.5 MB of activations) and its weights
(a larger network that needs more is refused by the engine, sr/planning.py)."""


def untileable_bytes(output_voxels: int, extra_volumes: int = 0) -> float:
    """What no tiling reduces: the process and ``WHOLE_VOLUMES + extra_volumes`` volumes."""
    return BASE_GB * 1e9 + 4.0 * (WHOLE_VOLUMES + extra_volumes) * output_voxels


def minimum_peak_gb(output_voxels: int) -> float:
    """The least memory a run with this output grid needs (smallest tiles, views included)."""
    return (untileable_bytes(output_voxels, VIEW_VOLUMES) / 1e9) + SMALLEST_TILE_GB


def physical_memory_gb() -> float | None:
    """The machine's RAM (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (ValueError, OSError, AttributeError):
        return None
