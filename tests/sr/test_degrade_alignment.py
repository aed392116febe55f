"""The degradation model must put every simulated slice where the upsampler assumes it.

A half-voxel error moves the whole training target (measured: up to 2.8 dB); these tests fail on
the old even-width box filter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bids_mrisr.image.spline import cubic_resample_axis
from bids_mrisr.sr.degrade import PROFILES, Degradation, degrade, slice_profile_kernel
from bids_mrisr.sr.pairs import PairSampler

FACTORS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def _up(volume: np.ndarray, params: Degradation) -> tuple[np.ndarray, int]:
    low, _ = degrade(volume, (1.0, 1.0, 1.0), params)
    n = volume.shape[params.axis]
    covered = int(low.shape[params.axis] * params.factor)  # HR extent the slices cover
    return cubic_resample_axis(low, params.axis, params.factor, n), covered


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("factor", FACTORS)
def test_ramp_is_not_shifted(profile: str, factor: float) -> None:
    n = 60
    for axis in range(3):
        shape = [6, 6, 6]
        shape[axis] = n
        coord = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        ramp = np.broadcast_to(coord, shape).astype(np.float32)
        params = Degradation(axis=axis, factor=factor, profile=profile)
        up, covered = _up(ramp, params)
        margin = int(np.ceil(4 * factor))
        inner = [slice(None)] * 3
        inner[axis] = slice(margin, covered - margin)
        shift = float(np.mean((up - ramp)[tuple(inner)]))  # slope 1: the offset is the shift
        assert abs(shift) < 0.05, (axis, factor, profile, shift)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("factor", FACTORS)
def test_thin_plate_centre_of_mass_stays(profile: str, factor: float) -> None:
    """Averaged over plate positions across one slice period (the sampling phase of a thin
    plate moves its centre either way; a misplaced slice moves it one way)."""
    n = 64
    coord = np.arange(n, dtype=np.float64)
    errors = []
    for centre in 28.0 + np.linspace(0, factor, 9)[:-1]:
        plate = np.exp(-0.5 * ((coord - centre) / 1.2) ** 2).astype(np.float32)
        vol = np.broadcast_to(plate[None, None, :], (4, 4, n)).copy()
        up, _ = _up(vol, Degradation(axis=2, factor=factor, profile=profile))
        profile_up = up[0, 0]
        errors.append(float((profile_up * coord).sum() / profile_up.sum()) - centre)
    assert abs(float(np.mean(errors))) < 0.05, (factor, profile, errors)


def test_profile_kernels_are_symmetric_unit_sum_and_scale_with_thickness() -> None:
    for profile in PROFILES:
        for factor in FACTORS:
            k = slice_profile_kernel(factor, profile)
            assert k.size % 2 == 1
            np.testing.assert_allclose(k, k[::-1], atol=1e-12)
            assert abs(k.sum() - 1) < 1e-9
            offsets = np.arange(k.size) - k.size // 2
            var = float((k * offsets**2).sum())
            thin = slice_profile_kernel(factor, profile, thickness_ratio=0.8)
            var_thin = float((thin * (np.arange(thin.size) - thin.size // 2) ** 2).sum())
            assert var_thin < var  # a slice gap: thinner slices, less blur


def test_sampler_bias_field_is_on_target_and_input_alike() -> None:
    rng = np.random.default_rng(0)
    vol = (rng.random((40, 40, 40)) * 0.2 + 0.5).astype(np.float32)
    sampler = PairSampler([vol], context_slices=1, residual_scale=1.0, crop=32, seed=3)
    sampler.random_degradation = lambda: (Degradation(axis=2, factor=2.0, bias_strength=0.3), 16)
    (hr, cubic, params), _reading = sampler._make_entry(0)
    assert not np.allclose(hr, vol)  # the field was drawn ...
    # ... and is on both sides: the residual stays small (no smooth field left to guess).
    inner = (slice(4, -4), slice(4, -4), slice(6, 34))
    no_field = np.abs(cubic_resample_axis(degrade(vol, (1, 1, 1), dataclasses.replace(
        params, bias_strength=0.0))[0], 2, 2.0, 40) - vol)[inner].mean()
    assert np.abs(cubic - hr)[inner].mean() < 1.5 * no_field + 1e-3


def test_sampler_crops_put_the_thick_axis_along_rows() -> None:
    """A volume varying only along the thick axis gives crops that vary only along H."""
    coord = np.sin(np.arange(48) / 3.0).astype(np.float32)
    for thick in range(3):
        shape = [1, 1, 1]
        shape[thick] = -1
        vol = np.broadcast_to(coord.reshape(shape) * 0.4 + 0.5, (48, 48, 48)).copy()
        sampler = PairSampler([vol], context_slices=1, residual_scale=1.0, crop=32, seed=1)
        sampler.random_degradation = lambda a=thick: (Degradation(axis=a, factor=2.0), 16)
        sampler.pool = [sampler._make_entry(0)[0]]
        cond, _ = sampler.sample(6)
        assert float(cond.std(dim=3).mean()) < 1e-4  # constant along W
        assert float(cond.std(dim=2).mean()) > 0.05  # varies along H
