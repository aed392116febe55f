"""Reorientation to RAS+, the orientation every later step and the networks assume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.image.io import save_nifti


def reorient_to_ras(in_file: Path, out_file: Path) -> Path:
    """Reorient to the closest canonical (RAS+) voxel order; singleton 4th dims are dropped."""
    image = nib.load(str(in_file))
    if image.ndim == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    canonical = nib.as_closest_canonical(image)
    data = np.asanyarray(canonical.dataobj)
    out = nib.Nifti1Image(data, canonical.affine, canonical.header)
    return save_nifti(out, Path(out_file))
