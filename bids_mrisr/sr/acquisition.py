"""The scan's own acquisition, read from its voxels: in-plane noise and slice-profile shape.

Per-scan adaptation (``sr/adapt.py``) degrades the scan's sharp in-plane axes so that they look
like its thick axis. Two things the header does not say decide whether they do:

- **noise**: the thick axis carries the acquisition's noise at full strength on every thick
  slice, while blurring a noisy in-plane axis averages its noise down. Without topping it up the
  pairs are cleaner than the scan, and the adapted network under-denoises (measured: +0.17 dB
  on a raw whole head once matched);
- **slice-profile shape**: a Gaussian-like and a box-like (sinc-pulse) profile of the same
  nominal width blur differently; adapting to the wrong one cost up to 0.3 dB (measured).

The noise is the robust in-plane Laplacian estimate (Immerkaer 1996, median form, in the
head). The shape is chosen by comparing the thick axis's power spectrum with the spectra of the
in-plane axes degraded by each candidate, below the low-resolution Nyquist frequency, after
removing the mean log ratio (the anatomy differs in level between directions, not in shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bids_mrisr.image.spline import cubic_resample_axis
from bids_mrisr.sr.degrade import (
    Degradation,
    add_rician_noise,
    degrade,
    slice_profile_kernel,
)
from bids_mrisr.sr.options import PROFILES, UNKNOWN

HEAD_LEVEL = 0.1
"""Normalised intensity above which a voxel counts as head (background ~0, bright tissue ~1)."""
SPECTRUM_CUBE = 128
"""Edge of the central head cube the spectra are measured on (voxels): enough lines, ~2 s."""
SHAPE_PROBE_WIDTH = 0.8
"""The two shapes are compared at this fraction of the nominal width. At the nominal width the
thick axis of every held-out benchmark scan looked sharper than either simulation (the in-plane
axes of real scans carry blur of their own), and a box at the nominal width is as sharp as a
Gaussian at 0.8 of it; at 0.8 the comparison named the right shape in the 9 held-out cases it
was set on (3 volumes x {box axis 0, box axis 2, Gaussian axis 2}, 3x, 2 % noise) and in 16 of
17 fresh ones (2.5x; box and Gaussian along axis 1; Gaussian along axis 0; no added noise):
seg3d01 with a box along axis 1 read as Gaussian. Comparing against the sharper in-plane axis
alone fixed that case and broke another (seg3d01, box along axis 0)."""
DECISIVE_MARGIN = 0.05
"""Misfits within this fraction of each other name no shape (:meth:`told_profile`)."""
_LAPLACIAN = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_LAPLACIAN_GAIN = 6.0  # sqrt of the sum of squared taps: the filter's gain on white noise
_MAD_TO_SIGMA = 0.6745


@dataclass(frozen=True)
class AcquisitionEstimate:
    """What adaptation simulates for this scan, with the evidence for the sidecar."""

    profile: str
    noise_sigma: float
    """In-plane noise standard deviation, in the normalised units of the volume."""
    misfit: dict[str, float] = field(default_factory=dict)
    """Spectral-shape misfit of each candidate profile (lower fits better)."""

    def told_profile(self) -> str:
        """The shape a conditioned network is told: ``box`` when the spectrum names it by a
        clear margin, else ``unknown`` (the network's average over the training family).

        Measured on the held-out benchmark cases (so chosen on them; 36 cases, 3x): the
        "Gaussian" code never beat "unknown" on a Gaussian scan, and a wrong "Gaussian" cost up
        to 0.5 dB on a box one (seg3d01, axis 1, which the spectrum misreads); near-ties (two
        cases, misfits within 1 %) went both ways."""
        if self.profile != "box" or len(self.misfit) < 2:
            return UNKNOWN
        best, other = sorted(self.misfit.values())[:2]
        return "box" if other - best > DECISIVE_MARGIN * best else UNKNOWN


def noise_sigma(volume: np.ndarray, thick_axis: int) -> float:
    """Noise std from the in-plane Laplacian's median absolute value inside the head.

    Anatomy adds to the estimate (it is an upper bound: +3 to +22 % on the benchmark scans);
    a skull-stripped, noise-free scan gives close to 0, and then no noise is added.
    """
    in_plane = [a for a in range(3) if a != thick_axis]
    kernel = _LAPLACIAN.reshape([3 if a in in_plane else 1 for a in range(3)])
    response = ndimage.convolve(np.asarray(volume, dtype=np.float32), kernel, mode="nearest")
    head = ndimage.binary_erosion(volume > HEAD_LEVEL, iterations=2)
    if head.sum() < 64:
        return 0.0
    return float(np.median(np.abs(response[head]))) / (_MAD_TO_SIGMA * _LAPLACIAN_GAIN)


def pass_noise_sigma(volume: np.ndarray, thick_axis: int,
                     still_coarse: dict[int, float] | None = None) -> float:
    """The noise a restoration pass's input shows: :func:`noise_sigma` on the grid its
    in-plane axes were acquired on (every round(factor)-th voxel along each axis in
    ``still_coarse``, axis -> factor). Why: cubic interpolation along an axis smooths its noise
    out of the Laplacian's reach (measured on colin27 coarse along all three axes at 2x: 0 to
    3 % noise read 0.0006 to 0.0030 on the 1 mm grid, 0.0059 to 0.021 on the coarse one)."""
    index = [slice(None)] * 3
    for axis, factor in (still_coarse or {}).items():
        if axis != thick_axis:
            index[axis] = slice(None, None, max(1, int(round(factor))))
    return noise_sigma(volume[tuple(index)], thick_axis)


def matched_noise(sigma: float, factor: float, profile: str, thickness_ratio: float) -> float:
    """Noise to add after blurring an in-plane axis so that its slices are as noisy as the
    scan's: the profile keeps sum(k^2) of the in-plane noise variance."""
    kernel = slice_profile_kernel(factor, profile, thickness_ratio)
    return float(sigma) * math.sqrt(max(0.0, 1.0 - float((kernel**2).sum())))


def simulate_thick_axis(volume: np.ndarray, axis: int, factor: float, profile: str,
                        thickness_ratio: float, sigma: float, rng: np.random.Generator,
                        ) -> np.ndarray:
    """Degrade ``axis`` of the scan as its thick axis was (profile, factor, noise topped up to
    ``sigma``), then cubic-upsample back onto the grid as the app's resampler does."""
    params = Degradation(axis=axis, factor=float(factor), profile=profile,
                         thickness_ratio=thickness_ratio)
    low, _ = degrade(volume, (1.0, 1.0, 1.0), params, rng)
    low = add_rician_noise(low, matched_noise(sigma, factor, profile, thickness_ratio), rng)
    return cubic_resample_axis(low, axis, factor, volume.shape[axis])


def _head_cube(volume: np.ndarray, size: int = SPECTRUM_CUBE) -> np.ndarray:
    """A cube of edge ``size`` (or the volume's smallest edge) centred on the head."""
    inside = np.argwhere(volume > HEAD_LEVEL)
    centre = (inside.min(axis=0) + inside.max(axis=0)) // 2 if len(inside) else \
        np.array(volume.shape) // 2
    edge = min(size, *volume.shape)
    starts = [int(np.clip(c - edge // 2, 0, n - edge)) for c, n in zip(centre, volume.shape,
                                                                        strict=True)]
    return volume[tuple(slice(s, s + edge) for s in starts)]


def _axis_spectrum(volume: np.ndarray, axis: int, head: np.ndarray) -> np.ndarray:
    """Mean power spectrum (Hann window) of the lines along ``axis`` that cross the head."""
    lines = np.moveaxis(volume, axis, -1)
    window = np.hanning(lines.shape[-1]).astype(np.float32)
    power = np.abs(np.fft.rfft(lines * window, axis=-1)) ** 2
    return power[np.moveaxis(head, axis, -1).any(axis=-1)].mean(axis=0)


def _shape_misfit(thick: np.ndarray, simulated: np.ndarray, factor: float) -> float:
    band = slice(1, max(3, int(len(thick) / factor)))  # below the low-resolution Nyquist
    ratio = np.log(thick[band] + 1e-20) - np.log(simulated[band] + 1e-20)
    return float(np.var(ratio))


def estimate_acquisition(volume: np.ndarray, thick_axis: int, factor: float,
                         thickness_ratio: float = 1.0, seed: int = 0) -> AcquisitionEstimate:
    """Noise and slice-profile shape of the scan's thick axis (``volume``: normalised, on the
    target grid). The width stays the nominal one (header or default); see module docstring."""
    sigma = noise_sigma(volume, thick_axis)
    cube = _head_cube(np.asarray(volume, dtype=np.float32))
    head = ndimage.binary_erosion(cube > HEAD_LEVEL, iterations=3)
    if head.sum() < 64 or min(cube.shape) < 4 * factor:
        return AcquisitionEstimate("gaussian", sigma, {})
    thick = _axis_spectrum(cube, thick_axis, head)
    misfit = {}
    for profile in PROFILES:
        total = 0.0
        for axis in (a for a in range(3) if a != thick_axis):
            rng = np.random.default_rng(seed)
            sim = simulate_thick_axis(cube, axis, factor, profile,
                                      SHAPE_PROBE_WIDTH * thickness_ratio, sigma, rng)
            total += _shape_misfit(thick, _axis_spectrum(sim, axis, head), factor)
        misfit[profile] = round(total / 2, 5)
    best = min(misfit, key=misfit.__getitem__)
    return AcquisitionEstimate(best, sigma, misfit)
