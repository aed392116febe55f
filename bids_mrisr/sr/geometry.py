"""Acquisition geometry read from voxel sizes: which axis was acquired with thick slices."""

from __future__ import annotations

from collections.abc import Sequence

ANISOTROPY_THRESHOLD = 1.3
"""An axis counts as thick when its spacing is at least this many times the others' largest."""


def thick_axis(zooms: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """Index of the single coarsest axis when it is clearly coarser than the other two."""
    z = [float(v) for v in zooms[:3]]
    axis = max(range(3), key=lambda i: z[i])
    others = max(z[i] for i in range(3) if i != axis)
    return axis if others > 0 and z[axis] >= threshold * others else None


def anisotropy(zooms: Sequence[float]) -> float:
    """Coarsest over finest spacing (1 for isotropic voxels)."""
    z = [float(v) for v in zooms[:3]]
    return max(z) / min(z) if min(z) > 0 else 1.0
