"""The scan's own noise and slice-profile shape, as per-scan adaptation reads them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.sr.acquisition import (
    estimate_acquisition,
    matched_noise,
    noise_sigma,
    simulate_thick_axis,
)
from bids_mrisr.sr.adapt import adaptation_sampler
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.pairs import simulate_cubic
from tests.sr.test_regression import _sharp_phantom


def test_noise_estimate_recovers_the_added_noise_on_a_phantom() -> None:
    clean = _sharp_phantom((64, 64, 64))
    assert noise_sigma(clean, 2) < 0.001  # piecewise-constant anatomy barely registers
    for sigma in (0.01, 0.03, 0.05):
        noisy = clean + np.random.default_rng(1).normal(0, sigma, clean.shape).astype(np.float32)
        # An upper bound: the edges add a little (+0.003 here).
        assert sigma <= noise_sigma(noisy, 2) < sigma + 0.004


def test_matched_noise_tops_up_what_the_profile_averages_away() -> None:
    # A hard box of width 3 keeps a third of the noise variance (so sqrt(2/3) is added back);
    # soft edges spread it a little further; a Gaussian of FWHM 3 keeps less still.
    assert np.sqrt(2 / 3) < matched_noise(1.0, 3.0, "box", 1.0) < 0.9
    assert matched_noise(1.0, 3.0, "gaussian", 1.0) > matched_noise(1.0, 3.0, "box", 1.0)
    assert matched_noise(0.0, 3.0, "box", 1.0) == 0.0


def test_simulated_thick_slices_are_as_noisy_as_the_scans() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((60, 60, 60), 0.5, np.float32)
    sigma = 0.05
    # The scan: noise added on each thick slice of axis 2 (white in-plane) ...
    low = flat[:, :, ::3] + rng.normal(0, sigma, flat[:, :, ::3].shape).astype(np.float32)
    thick_noise = float(low.std())
    noisy_scan = np.repeat(low, 3, axis=2)
    # ... and the in-plane simulation of it from the scan's own noisy in-plane axis 0.
    sim = simulate_thick_axis(noisy_scan, 0, 3.0, "box", 1.0, sigma, rng)
    sim_low = sim[1::3]  # the thick-slice centres along the simulated axis
    assert float(sim_low.std()) == pytest.approx(thick_noise, rel=0.1)
    without = simulate_thick_axis(noisy_scan, 0, 3.0, "box", 1.0, 0.0, rng)
    assert float(without[1::3].std()) < 0.7 * thick_noise  # what the old pairs looked like


def test_adaptation_crops_keep_both_in_plane_directions_sharp() -> None:
    scan = simulate_cubic(_sharp_phantom((40, 40, 40)), Degradation(axis=2, factor=3.0),
                          np.random.default_rng(0))
    sampler = adaptation_sampler(scan, thick_axis=2, factor=3.0, context_slices=1,
                                 residual_scale=1.0, crop=32, seed=0, profile="box",
                                 noise_sigma=0.01)
    assert sampler.slice_axis == 2 and not sampler.remap_intensities
    assert {p.profile for _, _, p in sampler.pool} == {"box"}
    simulated = [cubic for _, cubic, _ in sampler.pool]
    sampler.sample(64)
    # The scan's pool is fixed: never refreshed with random degradations.
    assert all(now is before for (_, now, _), before in zip(sampler.pool, simulated, strict=True))


def _benchmark_case(real_data, subject: str, profile: str, axis: int) -> np.ndarray:
    """A held-out scan seen through 3x thick slices with 2 % noise, normalised as the app."""
    path = sorted((real_data / f"sub-{subject}" / "anat").glob("*_T1w.nii*"))[0]
    truth = np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
    truth = truth.astype(np.float32)
    params = Degradation(axis=axis, factor=3.0, profile=profile, noise_fraction=0.02)
    scan = simulate_cubic(truth, params, np.random.default_rng(0))
    low, high = np.percentile(scan, [0.5, 99.5])
    return (scan - low) / (high - low)


@pytest.mark.parametrize(("profile", "axis"), [("box", 2), ("gaussian", 2), ("box", 0)])
def test_profile_shape_is_read_from_a_real_scans_spectrum(real_data, profile, axis) -> None:
    scan = _benchmark_case(real_data, "colin27", profile, axis)
    estimate = estimate_acquisition(scan, axis, 3.0)
    assert estimate.profile == profile, estimate.misfit
    assert 0.01 < estimate.noise_sigma < 0.04  # 2 % of the 99.5th percentile, plus anatomy
