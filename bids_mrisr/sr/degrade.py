"""Simulated low-resolution acquisitions, for the demo dataset, training and evaluation.

A scanner's thick-slice acquisition integrates the object over a slice profile, then samples
every ``factor`` voxels along the slice axis; the receive chain adds Rician noise and a smooth
multiplicative bias field. Each step is a pure function of numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Degradation:
    """One draw of the degradation model (recorded in training provenance)."""

    axis: int = 2
    factor: float = 3.0
    inplane_sigma_vox: float = 0.0
    noise_fraction: float = 0.0
    bias_strength: float = 0.0


def slice_profile_blur(volume: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Integrate over a slice profile of width ``factor`` voxels (box convolved with a Gaussian).

    The box models the nominal slice thickness; the Gaussian (sigma = factor / 6) rounds its
    edges like a real RF excitation profile.
    """
    width = max(1, int(round(factor)))
    blurred = ndimage.uniform_filter1d(volume.astype(np.float32), size=width, axis=axis,
                                       mode="nearest")
    return ndimage.gaussian_filter1d(blurred, sigma=max(factor / 6.0, 1e-3), axis=axis,
                                     mode="nearest")


def subsample_axis(volume: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Keep slices at the centres of thick slices (linear interpolation for non-integer factors)."""
    n = volume.shape[axis]
    count = max(1, int(np.floor(n / factor)))
    centres = (np.arange(count) + 0.5) * factor - 0.5
    coords = np.clip(centres, 0, n - 1)
    lower = np.floor(coords).astype(int)
    upper = np.minimum(lower + 1, n - 1)
    weight = (coords - lower).astype(np.float32)
    shape = [1] * volume.ndim
    shape[axis] = count
    weight = weight.reshape(shape)
    return (np.take(volume, lower, axis=axis) * (1 - weight)
            + np.take(volume, upper, axis=axis) * weight).astype(np.float32)


def smooth_bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator,
                      ) -> np.ndarray:
    """A smooth multiplicative field exp(s * low-order polynomial), mean ~1."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    field = np.zeros(shape, dtype=np.float32)
    for grid in grids:
        field += rng.normal() * grid + 0.5 * rng.normal() * (grid**2 - 1 / 3)
    field /= max(float(np.abs(field).max()), 1e-6)
    return np.exp(strength * field).astype(np.float32)


def add_rician_noise(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: Rician, as in magnitude MRI."""
    if sigma <= 0:
        return volume.astype(np.float32)
    real = volume + rng.normal(0.0, sigma, volume.shape)
    imag = rng.normal(0.0, sigma, volume.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def degrade(volume: np.ndarray, zooms: tuple[float, float, float], params: Degradation,
            rng: np.random.Generator | None = None,
            ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Simulate a thick-slice acquisition; return the low-resolution volume and its voxel size."""
    rng = rng or np.random.default_rng(0)
    data = np.asarray(volume, dtype=np.float32)
    if params.bias_strength > 0:
        data = data * smooth_bias_field(data.shape, params.bias_strength, rng)
    if params.inplane_sigma_vox > 0:
        sigmas = [params.inplane_sigma_vox] * 3
        sigmas[params.axis] = 0.0
        data = ndimage.gaussian_filter(data, sigma=sigmas, mode="nearest")
    data = slice_profile_blur(data, params.axis, params.factor)
    data = subsample_axis(data, params.axis, params.factor)
    if params.noise_fraction > 0:
        sigma = params.noise_fraction * float(np.percentile(data, 99.5))
        data = add_rician_noise(data, sigma, rng)
    new_zooms = list(zooms)
    new_zooms[params.axis] = zooms[params.axis] * params.factor
    return data, (float(new_zooms[0]), float(new_zooms[1]), float(new_zooms[2]))
