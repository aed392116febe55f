"""Checks an input volume before any work is spent on it.

Each problem is reported as one line naming the file, so a bad run fails fast and clearly while
the other runs are still processed.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

MIN_SLICES = 4


def input_problem(path: Path) -> str | None:
    """Return a one-line description of what is wrong with ``path``, or None if it is usable."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    try:
        image = nib.load(str(path))
        shape = image.shape
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"is not a readable NIfTI file ({reason})"
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        return f"is {len(shape)}D with shape {tuple(shape)}; only 3D volumes can be super-resolved"
    if len(shape) < 3:
        return f"has {len(shape)} dimensions; a 3D volume is needed"
    short = [(axis, n) for axis, n in enumerate(shape[:3]) if n < MIN_SLICES]
    if short:
        axis, n = short[0]
        return f"has only {n} slice(s) along axis {axis}; at least {MIN_SLICES} are needed"
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            return f"contains {bad} non-finite (NaN/Inf) voxel(s)"
    if not np.any(data):
        return "is all zeros"
    zooms = image.header.get_zooms()[:3]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        return f"has invalid voxel sizes {tuple(float(z) for z in zooms)}"
    return None


def looks_skull_stripped(path: Path, sidecar: dict | None = None) -> bool:
    """The input sidecar's ``SkullStripped`` if present, else an estimate from the image.

    A brain-extracted volume has an exactly-constant background and a non-background volume
    of a brain (< ~2 L), whereas a whole-head scan has noise around a 3-5 L head.
    """
    if sidecar and isinstance(sidecar.get("SkullStripped"), bool):
        return bool(sidecar["SkullStripped"])
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    background = data.min()
    foreground = np.count_nonzero(data != background)
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    background_fraction = 1.0 - foreground / data.size
    return bool(foreground * voxel_ml < 2000.0 and background_fraction > 0.2)
