"""Training pairs and the app's inputs must be the same pair: same geometry, same intensities."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.demo import thick_slice_affine
from bids_mrisr.image.n4 import n4_correct
from bids_mrisr.image.normalize import fit_normalisation, normalise_file
from bids_mrisr.image.reorient import ras_zooms, reorient_to_ras
from bids_mrisr.image.resample import resample_file
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.geometry import blurred_axes
from bids_mrisr.sr.training.data import simulate_cubic
from tests.conftest import phantom_volume


@pytest.mark.parametrize(("axis", "factor"), [(2, 3.0), (0, 2.0), (1, 4.0)])
def test_app_preprocessing_gives_the_training_samplers_cubic(tmp_path: Path, axis: int,
                                                             factor: float) -> None:
    hr = phantom_volume((48, 48, 48), seed=1)
    hr = fit_normalisation(hr).apply(hr)  # training volumes are normalised HR scans
    params = Degradation(axis=axis, factor=factor)
    low, zooms = degrade(hr, (1.0, 1.0, 1.0), params)
    image = nib.Nifti1Image(low * 1000, thick_slice_affine(np.eye(4), axis, factor))
    raw = tmp_path / "lowres.nii.gz"
    nib.save(image, str(raw))
    assert blurred_axes(ras_zooms(nib.load(str(raw))), 1.0) == (axis,)

    # The app's preprocessing chain, function by function (the nipype nodes wrap these).
    ras = reorient_to_ras(raw, tmp_path / "ras.nii")
    n4, _ = n4_correct(ras, tmp_path / "n4.nii")
    normed, _ = normalise_file(n4, tmp_path / "norm.nii", tmp_path / "norm.json")
    app_file, resolution = resample_file(normed, tmp_path / "grid.nii", None)
    app = np.asanyarray(nib.load(str(app_file)).dataobj)
    assert resolution == 1.0

    train = simulate_cubic(hr, params, np.random.default_rng(0))
    covered = app.shape[axis]
    assert covered == int(low.shape[axis] * factor)
    train = np.take(train, np.arange(covered), axis=axis)
    head = hr.take(np.arange(covered), axis=axis) > 0.1
    # The same intensity scale, up to what the percentile fit on the LR scan and N4 move ...
    gain, offset = np.polyfit(train[head], app[head], 1)
    assert abs(gain - 1) < 0.1 and abs(offset) < 0.1
    # ... and the same geometry: after that linear map the two agree voxel by voxel, and a
    # one-voxel misplacement is clearly worse.
    err = float(np.median(np.abs(app - (gain * train + offset))[head]))
    assert err < 0.01
    shifted = np.roll(train, 1, axis=axis)
    assert float(np.median(np.abs(app - (gain * shifted + offset))[head])) > 2 * err
