"""How much memory a run needs, estimated from its output grid before any work starts.

Measured on this project's CPU machine (peak RSS of the whole process, student model, one run):
about 0.48 GB for a tiny phantom (imports, torch, nipype), 0.98 GB for a 256x256x258 output
under ``--mem 2GB`` (30 B per output voxel above the base), 1.14 GB for a 192x256x256 output
restored along three axes (52 B per voxel). The model below rounds both up, so a refused run
would really not have fitted, and a run that passes may still be tiled by the SR engine to
stay inside ``--mem``.
"""

from __future__ import annotations

import os

BASE_GB = 0.5
"""Interpreter, torch, nipype and the network, before any volume."""
BYTES_PER_OUTPUT_VOXEL = 64
"""Whole-volume float32 arrays alive at the peak (input on the grid, N4 field, SR, sums)."""


def estimated_peak_gb(output_voxels: int) -> float:
    return BASE_GB + BYTES_PER_OUTPUT_VOXEL * output_voxels / 1e9


def physical_memory_gb() -> float | None:
    """The machine's RAM (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (ValueError, OSError, AttributeError):
        return None
