"""Where the input is exactly zero: air that the scanner (or a mask) left empty.

A field of view that cuts through the face, a defaced or skull-stripped scan: the input holds
zeros there, and the output must too. The networks see only the resampled volume, and their
receptive field (like the cubic spline's ringing) carries a faint texture a few voxels into
such regions (measured on ds-real xa30: about 8-10 against a 99th percentile of 1413). Only
target-grid voxels whose every input neighbour is zero are air, so voxels inside the head, and
the voxels at its edge, keep what the restoration gave them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.image.resample import resample_to_resolution


def zero_input_air(source_file: Path, grid: nib.Nifti1Image) -> np.ndarray:
    """True on ``grid``'s voxels whose trilinear stencil on the input (``source_file``, the
    reoriented scan, the grid the target grid was made from) holds only zeros."""
    source = nib.load(str(source_file))
    nonzero = (np.asanyarray(source.dataobj) != 0).astype(np.float32)
    resolution = float(grid.header.get_zooms()[0])
    support, _ = resample_to_resolution(nonzero, source.affine, resolution, order=1)
    if support.shape != grid.shape[:3]:
        raise ValueError(f"{source_file}: its grid {support.shape} on the target grid does not "
                         f"match {grid.shape[:3]}")
    return support == 0
