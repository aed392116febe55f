"""Reading and atomically writing NIfTI volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.runtime.atomic import atomic_write


def save_nifti(image: nib.Nifti1Image, path: Path) -> Path:
    """Save atomically, keeping the .nii/.nii.gz extension meaningful to nibabel."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)


def float_image(data: np.ndarray, like: nib.Nifti1Image, affine: np.ndarray | None = None,
                ) -> nib.Nifti1Image:
    """A float32 image with ``like``'s header fields (units, codes) on ``affine``."""
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32),
                            like.affine if affine is None else affine, header)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(image.affine, code=int(like.header["qform_code"]) or 1)
    image.set_sform(image.affine, code=int(like.header["sform_code"]) or 1)
    return image
