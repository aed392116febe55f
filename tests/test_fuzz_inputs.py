"""Property-based fuzzing of the input checks and the preprocessing chain (hypothesis).

For any shape, data type, affine and voxel size: the input check either accepts the file or
returns a one-line problem, and an accepted file goes through reorientation, N4,
normalisation and resampling without an exception and with finite values.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from bids_mrisr.bids.inputs import input_problem
from bids_mrisr.image.n4 import n4_correct
from bids_mrisr.image.normalize import normalise_file
from bids_mrisr.image.reorient import reorient_to_ras
from bids_mrisr.image.resample import resample_file

DTYPES = (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)


@st.composite
def volumes(draw) -> tuple[np.ndarray, np.ndarray]:
    shape = list(draw(st.lists(st.integers(4, 14), min_size=3, max_size=3)))
    odd = draw(st.integers(0, 9))  # 7 in 10 draws are plain 3D volumes
    if odd == 0:
        shape = shape[:2]
    elif odd == 1:
        shape.append(draw(st.integers(1, 3)))
    elif odd == 2:
        shape[draw(st.integers(0, 2))] = draw(st.integers(1, 3))
    shape = tuple(shape)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(("noise", "constant", "sparse", "huge")))
    if kind == "constant":
        data = np.full(shape, draw(st.integers(0, 100)), dtype=np.float64)
    elif kind == "sparse":
        data = (rng.random(shape) > 0.97) * 500.0
    elif kind == "huge":
        data = rng.random(shape) * 1e30
    else:
        data = rng.random(shape) * 1000.0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(data, info.min, info.max)
    data = data.astype(dtype)
    zoom = st.sampled_from((0.5, 0.9, 1.0, 1.0, 2.0, 3.0, 5.0, 1.0, 2.0, 3.0, 1e-4, 80.0))
    zooms = draw(st.lists(zoom, min_size=3, max_size=3))
    affine = np.diag([*zooms, 1.0])
    if draw(st.booleans()):  # rotate / flip / shear the voxel axes
        matrix = np.array(draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=9,
                                        max_size=9))).reshape(3, 3)
        affine[:3, :3] = matrix
    affine[:3, 3] = draw(st.lists(st.floats(-200, 200), min_size=3, max_size=3))
    return data, affine


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volumes())
def test_any_volume_is_accepted_and_preprocessed_or_refused_in_one_line(volume):
    data, affine = volume
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "in.nii.gz"
        try:
            nib.save(nib.Nifti1Image(data, affine), str(path))
        except (nib.spatialimages.HeaderDataError, np.linalg.LinAlgError):
            assume(False)  # nibabel itself cannot write this affine: no such file can exist
        problem = input_problem(path, mem_gb=2.0)
        if problem is not None:
            assert isinstance(problem, str) and "\n" not in problem and problem
            event(f"refused: {problem.split(' (')[0][:40]}")
            return
        event("accepted and preprocessed")
        ras = reorient_to_ras(path, folder / "ras.nii")
        corrected, _ = n4_correct(ras, folder / "n4.nii", bias_file=folder / "bias.nii",
                                  shrink_factor=2)
        normalised, _ = normalise_file(corrected, folder / "norm.nii", folder / "norm.json")
        resampled, resolution = resample_file(normalised, folder / "grid.nii", None)
        assert resolution > 0
        out = np.asanyarray(nib.load(str(resampled)).dataobj)
        assert out.ndim == 3 and np.isfinite(out).all()
