"""2.5D geometry: planes, condition stacks, batches and overlapping in-plane tiles.

Pure index arithmetic (numpy/torch), kept apart from the engine so it can be tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Slicing axis of each plane for an RAS-oriented volume (axial slices stack along axis 2)."""
PLANE_IDS = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Stable per-plane ids for seeding: a plane's noise does not depend on which others run."""


def planar_view(volume: np.ndarray | torch.Tensor, axis: int, thick_axis: int | None = None,
                ) -> np.ndarray | torch.Tensor:
    """``[S, H, W]`` view of ``volume`` sliced along ``axis``, with ``thick_axis`` along H.

    The networks are trained with the acquisition's thick (blurred) axis along the rows of every
    slice; this view gives the engine the same orientation. Writes through the view reach the
    volume (numpy and torch alike).
    """
    rest = [a for a in range(3) if a != axis]
    swap = thick_axis is not None and thick_axis in rest and rest.index(thick_axis) == 1
    if isinstance(volume, torch.Tensor):
        view = volume.movedim(axis, 0)
        return view.transpose(1, 2) if swap else view
    view = np.moveaxis(volume, axis, 0)
    return view.swapaxes(1, 2) if swap else view


def planes_for_geometry(planes: tuple[str, ...], thick_axis: int | None) -> tuple[str, ...]:
    """The requested planes that contain the thick axis (they see its blur in-plane); all of
    them when the input is isotropic or when none would be left."""
    if thick_axis is None:
        return tuple(planes)
    kept = tuple(p for p in planes if PLANE_AXES[p] != thick_axis)
    return kept or tuple(planes)


def condition_indices(slices: np.ndarray | range, num_slices: int, m: int) -> np.ndarray:
    """``(len(slices), 2m+1)`` neighbour indices, replicated at the volume borders."""
    s = np.asarray(slices, dtype=np.int64)[:, None]
    return np.clip(s + np.arange(-m, m + 1)[None, :], 0, num_slices - 1)


def condition_stack(planar: torch.Tensor, slices: range, m: int) -> torch.Tensor:
    """Condition batch ``[B, 2m+1, H, W]`` from a ``[S, H, W]`` view of the volume."""
    idx = torch.from_numpy(condition_indices(slices, planar.shape[0], m).reshape(-1))
    out = planar.index_select(0, idx)
    return out.reshape(len(slices), 2 * m + 1, *planar.shape[1:])


def batches(num_slices: int, batch_size: int) -> list[range]:
    return [range(i, min(i + batch_size, num_slices)) for i in range(0, num_slices, batch_size)]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Starts of tiles of size ``tile`` covering ``[0, length)``, neighbours sharing ``overlap``.

    The stride is a multiple of ``align`` so every tile sits on the same token/patch grid as the
    whole slice (the router then sees the same patches tiled or not); the last tile may be cut
    short by the border.
    """
    if tile >= length:
        return [0]
    if tile < align:
        raise ValueError(f"tile size {tile} is smaller than the grid alignment {align}")
    # stride <= tile: consecutive tiles always touch or overlap, so nothing is left uncovered
    # and every start lies inside [0, length).
    stride = min(tile, max(align, (tile - overlap) // align * align))
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


def blend_ramp(size: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weight: raised-cosine taper over ``overlap`` px on inner tile edges.

    Two neighbours' complementary ramps sum to one across their shared strip. Edges on the image
    border get no taper. Weights stay strictly positive so normalising by their sum is defined.
    """
    w = torch.ones(size, dtype=torch.float32)
    n = min(overlap, size)
    if n <= 0:
        return w
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n)
    ramp = ramp.clamp(min=1e-3)
    if not at_start:
        w[:n] = ramp
    if not at_end:
        w[size - n :] = torch.minimum(w[size - n :], ramp.flip(0))
    return w


@dataclass(frozen=True)
class Tile:
    """One tile: the network sees ``window`` (core plus a context halo), ``core`` is kept."""

    window: tuple[slice, slice]
    core: tuple[slice, slice]
    inner: tuple[slice, slice]
    """Position of ``core`` inside ``window``."""
    weight: torch.Tensor
    """``[h, w]`` blending weight over ``core``."""


def _axis_tiles(length: int, tile: int, overlap: int, halo: int, align: int) -> list[tuple]:
    out = []
    for s in tile_starts(length, tile, overlap, align):
        e = min(s + tile, length)
        ws, we = max(0, s - halo), min(length, e + halo)
        out.append(
            (
                slice(ws, we),
                slice(s, e),
                slice(s - ws, e - ws),
                blend_ramp(e - s, overlap, s == 0, e >= length),
            )
        )
    return out


def plan_tiles(
    height: int, width: int, tile: int | None, overlap: int, halo: int = 0, align: int = 1
) -> list[Tile] | None:
    """Overlapping tiles over an ``height x width`` slice, or None when one tile covers it.

    ``tile`` is the core size; each network call sees up to ``tile + 2 * halo`` pixels, so the
    blended seams sit well inside every window, away from the network's padded borders.
    """
    if tile is None or (tile >= height and tile >= width):
        return None
    tiles: list[Tile] = []
    for wy, cy, iy, ry in _axis_tiles(height, tile, overlap, halo, align):
        for wx, cx, ix, rx in _axis_tiles(width, tile, overlap, halo, align):
            tiles.append(Tile((wy, wx), (cy, cx), (iy, ix), ry[:, None] * rx[None, :]))
    return tiles
