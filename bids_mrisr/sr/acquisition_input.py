"""How each restoration pass's thick axis was acquired: one immutable value per pass.

:func:`pass_acquisitions` makes the values once per run, from the header (the thick axes and
their factors, in ``SROptions``), the sidecar (``SliceThickness``; ``MRAcquisitionType`` 2D,
told by the workflow), the user's ``--slice-profile`` and, where a conditioned network or
adaptation needs it, the scan's own spectrum (:mod:`bids_mrisr.sr.acquisition`). The network's
acquisition code, per-scan adaptation, the consistency step, the sidecar and so the report all
read these values; nothing downstream works the profile out again. ``unknown`` is a value: the
network is then told the family's average, and consistency simulates the 3:1 mixture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr.networks.config import ACQUISITION_FEATURES, ModelConfig, acquisition_code
from bids_mrisr.sr.options import UNKNOWN, SROptions

if TYPE_CHECKING:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate

FROM_SPECTRUM = "estimated from the scan's spectrum"
"""``profile_source`` of a shape read from the scan's voxels."""


@dataclass(frozen=True)
class PassAcquisition:
    """What is known of how one pass's thick axis was acquired, and where each part came from
    (axis and factor: the header; width: ``SliceThickness``; profile: ``profile_source``)."""

    axis: int | None
    """The thick axis this pass restores; None: the geometry is unknown (one pass over the
    planes as given)."""
    factor: float | None = None
    """Thick spacing over target spacing (header); None: unknown."""
    width: float | None = None
    """Slice thickness over slice spacing (``SliceThickness``); None: unknown (contiguous
    slices wherever a width must be simulated)."""
    profile: str = UNKNOWN
    """Slice-profile shape the network is told: ``gaussian``, ``box`` or ``unknown``."""
    profile_source: str = UNKNOWN
    """Where a known ``profile`` came from: ``given`` (``--slice-profile``), the BIDS metadata
    (``from MRAcquisitionType 2D``) or :data:`FROM_SPECTRUM`."""
    estimate: AcquisitionEstimate | None = None
    """The scan's own reading (noise, best-fitting shape, misfits), when it was read."""

    @property
    def simulated_profile(self) -> str:
        """The shape adaptation simulates: the known one, else the spectrum's best fit even
        when it is not clear enough to tell the network (a shape must be picked)."""
        if self.profile != UNKNOWN:
            return self.profile
        return self.estimate.profile if self.estimate is not None else "gaussian"

    def code(self, width: int = ACQUISITION_FEATURES, noise: float | None = None,
             coarse_others: int = 0) -> torch.Tensor:
        """[1, width] acquisition code for a conditioned network (zeros: the family's
        average); a code of ``SCAN_FEATURES`` entries also tells the pass's input noise (None:
        this value's reading, if any) and its other coarse axes."""
        if noise is None and self.estimate is not None:
            noise = self.estimate.noise_sigma
        code = ([0.0] * width if self.factor is None
                else acquisition_code(self.factor, self.profile, self.width, noise=noise,
                                      coarse_others=coarse_others, width=width))
        return torch.tensor([code], dtype=torch.float32)

    def with_reading(self, estimate: AcquisitionEstimate) -> PassAcquisition:
        """This value with the scan's reading; its shape is told when the user or the sidecar
        did not tell one and the spectrum reads box by a clear margin."""
        told = estimate.told_profile()
        if self.profile != UNKNOWN or told == UNKNOWN:
            return dataclasses.replace(self, estimate=estimate)
        return dataclasses.replace(self, estimate=estimate, profile=told,
                                   profile_source=FROM_SPECTRUM)

    def describe(self) -> dict[str, Any]:
        """What a conditioned network was told for this pass, for the sidecar."""
        if self.profile != UNKNOWN:
            profile = f"{self.profile} ({self.profile_source})"
        elif self.estimate is not None:
            profile = (f"unknown (the scan's spectrum reads {self.estimate.profile}, which is "
                       "told only when it reads box by a clear margin)")
        else:
            profile = UNKNOWN
        return {
            "Axis": self.axis,
            "Factor": UNKNOWN if self.factor is None else round(self.factor, 4),
            "SliceProfile": profile,
            "SliceWidth": f"{self.width:g} x slice spacing" if self.width else UNKNOWN,
        }


def told_acquisitions(options: SROptions) -> tuple[PassAcquisition, ...]:
    """One value per pass from what the header, sidecar and flags say (no reading of the
    scan); a profile is told for a single thick axis only."""
    single = len(options.blurred_axes or ()) == 1
    values = []
    for thick in [None] if options.blurred_axes is None else options.blurred_axes:
        if thick is None or options.axis_factors is None:
            values.append(PassAcquisition(thick))
            continue
        told = single and options.slice_profile != UNKNOWN
        values.append(PassAcquisition(
            thick, float(options.axis_factors[thick]), options.slice_thickness_ratio,
            options.slice_profile if told else UNKNOWN,
            options.slice_profile_source if told else UNKNOWN))
    return tuple(values)


def pass_acquisitions(config: ModelConfig, volume: np.ndarray, options: SROptions,
                      ) -> tuple[PassAcquisition, ...]:
    """The run's values, with the scan's reading of its single thick axis where a conditioned
    network or adaptation needs it (0.5-1 s measured on the 3x benchmark volumes)."""
    values = told_acquisitions(options)
    needs_reading = options.adapt_steps > 0 or (
        config.acquisition_features and options.slice_profile == UNKNOWN)
    if only_thick_axis(values) is None or not needs_reading:
        return values
    return (read_scan(values[0], volume, options.threads, options.seed),)


def read_scan(value: PassAcquisition, volume: np.ndarray, threads: int | None = None,
              seed: int = 0) -> PassAcquisition:
    """``value`` with the reading of the scan's noise and slice-profile shape along its axis."""
    from bids_mrisr.sr.acquisition import estimate_acquisition

    if value.axis is None or value.factor is None:
        raise ValueError("the scan can be read only along a known thick axis and factor")
    with devices.cpu_threads(threads):
        return value.with_reading(estimate_acquisition(volume, value.axis, value.factor,
                                                       value.width or 1.0, seed))


def only_thick_axis(values: tuple[PassAcquisition, ...]) -> PassAcquisition | None:
    """The one pass's value when the input has a single thick axis of known factor."""
    if len(values) == 1 and values[0].axis is not None and values[0].factor is not None:
        return values[0]
    return None
