"""Reading and atomically writing NIfTI volumes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_nifti(image: nib.Nifti1Image, path: Path) -> Path:
    """Save atomically (temp file + rename), keeping the .nii/.nii.gz extension meaningful."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        nib.save(image, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


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
