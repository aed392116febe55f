"""Cubic B-spline resampling onto the isotropic target grid.

The target grid covers the same field of view as the input (voxel edges aligned), so the
super-resolution networks only have to restore detail, never to move anatomy.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from bids_mrisr.image.io import float_image, save_nifti
from bids_mrisr.image.spline import cubic_resample

DEFAULT_MAX_RESOLUTION_MM = 1.0


def default_resolution(zooms: tuple[float, ...]) -> float:
    """The finest input spacing, but never coarser than 1 mm (2 mm iso input -> 1 mm)."""
    return float(min(min(zooms[:3]), DEFAULT_MAX_RESOLUTION_MM))


def target_grid(shape: tuple[int, ...], affine: np.ndarray, resolution: float,
                ) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Shape and affine of the isotropic grid, plus the per-axis step in input voxels."""
    zooms = voxel_sizes(affine)
    step = resolution / zooms  # input voxels per output voxel
    new_shape = tuple(
        int(max(1, round(n * z / resolution))) for n, z in zip(shape[:3], zooms, strict=True))
    # Output voxel i covers input voxel coordinate (i + 0.5) * step - 0.5 (edges aligned).
    start = 0.5 * step - 0.5
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * step[np.newaxis, :]
    new_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return new_shape, new_affine, step


def resample_to_resolution(data: np.ndarray, affine: np.ndarray, resolution: float,
                           order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``data`` onto the isotropic grid of ``resolution`` mm (a cubic B-spline by
    default; ``order=1`` is the linear baseline of the quality benchmark)."""
    new_shape, new_affine, step = target_grid(data.shape, affine, resolution)
    if new_shape == tuple(data.shape[:3]) and np.allclose(step, 1.0):
        return np.asarray(data, dtype=np.float32), affine
    if order == 3:  # separable: the same numbers as affine_transform, a fifth of the time
        return cubic_resample(data, tuple(1.0 / step), new_shape), new_affine
    out = ndimage.affine_transform(
        np.asarray(data, dtype=np.float32),
        matrix=step,
        offset=0.5 * step - 0.5,
        output_shape=new_shape,
        order=order,
        mode="nearest",
        output=np.float32,
    )
    return out, new_affine


def resample_file(in_file: Path, out_file: Path, resolution: float | None) -> tuple[Path, float]:
    image = nib.load(str(in_file))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    resolution = resolution or default_resolution(zooms)
    data, affine = resample_to_resolution(np.asanyarray(image.dataobj), image.affine, resolution)
    save_nifti(float_image(data, image, affine), Path(out_file))
    return Path(out_file), resolution
