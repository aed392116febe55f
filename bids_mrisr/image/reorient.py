"""Reorientation to RAS+, the orientation every later step and the networks assume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.image.io import save_nifti


def ras_zooms(image: nib.spatialimages.SpatialImage) -> tuple[float, float, float]:
    """Voxel sizes in the order of the RAS+ reoriented grid (which axis is thick after
    :func:`reorient_to_ras`, hence on the target grid)."""
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    ornt = nib.io_orientation(image.affine)
    out = [0.0, 0.0, 0.0]
    for axis, (ras_axis, _flip) in enumerate(ornt[:3]):
        out[int(ras_axis)] = zooms[axis]
    return out[0], out[1], out[2]


def reorient_to_ras(in_file: Path, out_file: Path) -> Path:
    """Reorient to the closest canonical (RAS+) voxel order; singleton 4th dims are dropped."""
    image = nib.load(str(in_file))
    if image.ndim == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    canonical = nib.as_closest_canonical(image)
    data = np.asanyarray(canonical.dataobj)
    out = nib.Nifti1Image(data, canonical.affine, canonical.header)
    return save_nifti(out, Path(out_file))
