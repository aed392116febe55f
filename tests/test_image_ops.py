"""Pure preprocessing functions: normalisation round trip, grid geometry, degradation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.image.n4 import n4_correct
from bids_mrisr.image.normalize import fit_normalisation
from bids_mrisr.image.reorient import reorient_to_ras
from bids_mrisr.image.resample import default_resolution, resample_to_resolution, target_grid
from bids_mrisr.sr.degrade import Degradation, degrade
from tests.conftest import phantom_volume, write_volume


def test_normalisation_round_trip_and_range():
    data = phantom_volume() * 3.7 + 12
    params = fit_normalisation(data)
    normalised = params.apply(data)
    foreground = data > 100
    assert np.percentile(normalised[foreground], 99.5) == pytest.approx(1.0, abs=1e-3)
    assert np.median(normalised[~foreground]) == pytest.approx(0.0, abs=0.02)
    np.testing.assert_allclose(params.invert(normalised), data, rtol=1e-5, atol=1e-3)


def test_default_resolution_is_finest_at_most_1mm():
    assert default_resolution((1.0, 1.0, 3.0)) == 1.0
    assert default_resolution((0.9, 0.9, 1.0)) == pytest.approx(0.9)
    assert default_resolution((2.0, 2.0, 2.0)) == 1.0


def test_target_grid_keeps_field_of_view():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    shape, new_affine, _ = target_grid((10, 10, 5), affine, 1.0)
    assert shape == (10, 10, 15)
    # The outer edge of the first voxel is unchanged: centre - half a voxel.
    old_edge = affine[:3, 3] - 0.5 * np.array([1.0, 1.0, 3.0])
    new_edge = new_affine[:3, 3] - 0.5 * np.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(new_edge, old_edge)


def test_resample_preserves_smooth_signal():
    x = np.linspace(0, 1, 30)
    data = np.broadcast_to(np.sin(2 * x)[None, None, :], (6, 6, 30)).astype(np.float32)
    low, affine = resample_to_resolution(data[:, :, 1::3], np.diag([1, 1, 3.0, 1]), 1.0)
    assert low.shape == (6, 6, 30)
    np.testing.assert_allclose(low[0, 0, 3:-3], data[0, 0, 3:-3], atol=0.02)


@pytest.mark.parametrize("zooms, resolution", [((1.0, 1.3, 3.0), 1.0), ((2.0, 2.0, 2.0), 1.0),
                                               ((0.8, 1.0, 2.5), 1.2)])
def test_separable_cubic_matches_scipy_3d_spline(zooms, resolution):
    """The one-axis-at-a-time resampler gives scipy's 3D cubic B-spline numbers (boundary
    included), upsampling, subsampling and untouched axes alike."""
    from scipy import ndimage

    data = np.random.default_rng(0).random((17, 23, 9)).astype(np.float32) * 100
    affine = np.diag([*zooms, 1.0])
    fast, _ = resample_to_resolution(data, affine, resolution)
    shape, _, step = target_grid(data.shape, affine, resolution)
    reference = ndimage.affine_transform(data, matrix=step, offset=0.5 * step - 0.5,
                                         output_shape=shape, order=3, mode="nearest")
    assert fast.shape == tuple(shape) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-3)


def test_reorient_to_ras(tmp_path):
    data = phantom_volume((12, 14, 10))
    affine = np.array([[-1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    path = tmp_path / "lia.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    out = nib.load(str(reorient_to_ras(path, tmp_path / "ras.nii.gz")))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")


def test_n4_removes_a_bias_field(tmp_path):
    data = phantom_volume((48, 48, 24))
    ramp = np.exp(0.4 * np.linspace(-1, 1, 48))[:, None, None].astype(np.float32)
    path = write_volume(tmp_path / "biased.nii.gz", data * ramp, zooms=(1, 1, 1),
                        dtype=np.float32)
    out, bias = n4_correct(path, tmp_path / "n4.nii.gz", tmp_path / "bias.nii.gz")
    corrected = nib.load(str(out)).get_fdata()
    core = data > 700  # the inner tissue, uniform before the bias was applied
    spread_before = np.std((data * ramp)[core]) / np.mean((data * ramp)[core])
    spread_after = np.std(corrected[core]) / np.mean(corrected[core])
    assert spread_after < 0.7 * spread_before
    assert nib.load(str(bias)).shape == data.shape


def test_degrade_thick_slices():
    data = phantom_volume((20, 22, 30))
    low, zooms = degrade(data, (1.0, 1.0, 1.0), Degradation(axis=2, factor=3.0),
                         np.random.default_rng(0))
    assert low.shape == (20, 22, 10)
    assert zooms == (1.0, 1.0, 3.0)
    noisy, _ = degrade(data, (1.0, 1.0, 1.0),
                       Degradation(axis=0, factor=2.0, noise_fraction=0.05, bias_strength=0.3),
                       np.random.default_rng(0))
    assert noisy.shape == (10, 22, 30)
    assert np.all(noisy >= 0)  # Rician magnitude is never negative
