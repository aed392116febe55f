"""Acquisition geometry read from voxel sizes: which axes the input sampled coarsely."""

from __future__ import annotations

from collections.abc import Sequence

MIN_ANISOTROPY = 1.5
"""``--adapt auto`` adapts only when the coarsest spacing is at least this many times the
finest: an isotropic scan has no sharp in-plane axis to learn from."""
ANISOTROPY_THRESHOLD = 1.3
"""An axis needs restoring when its input spacing is at least this many times the target's."""


def anisotropy(zooms: Sequence[float]) -> float:
    """Coarsest over finest spacing (1 for isotropic voxels)."""
    z = [float(v) for v in zooms[:3]]
    return max(z) / min(z) if min(z) > 0 else 1.0


def blurred_axes(zooms: Sequence[float], resolution: float,
                 threshold: float = ANISOTROPY_THRESHOLD) -> tuple[int, ...]:
    """Axes whose input spacing is at least ``threshold`` x the target ``resolution``, coarsest
    first: the directions super-resolution has to restore (none for an input already at the
    target resolution; all three for a 2 mm isotropic input brought to 1 mm)."""
    factors = [float(z) / float(resolution) for z in zooms[:3]]
    axes = [a for a in range(3) if factors[a] >= threshold]
    return tuple(sorted(axes, key=lambda a: (-factors[a], a)))
