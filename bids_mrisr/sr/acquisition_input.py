"""What the engine tells a conditioned network about each pass, and reads from the scan for it.

Per restoration pass: the thick-slice factor (from the header), the slice-profile shape (from
``--slice-profile``, the BIDS metadata, or the scan's spectrum, for a single thick axis only) and
the slice width (from ``SliceThickness``); ``None`` for what is not known. The estimate from the
scan's voxels lives in :mod:`bids_mrisr.sr.acquisition`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr.networks.config import ModelConfig, acquisition_code
from bids_mrisr.sr.options import SROptions

if TYPE_CHECKING:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate


def single_thick_axis(options: SROptions) -> int | None:
    """The input's one thick axis, if it has exactly one and its factors are known."""
    axes = options.blurred_axes or ()
    return axes[0] if len(axes) == 1 and options.axis_factors is not None else None


def scan_estimate(config: ModelConfig, volume: np.ndarray, options: SROptions,
                  ) -> AcquisitionEstimate | None:
    """The scan's slice-profile shape and noise, read once from its voxels when a conditioned
    network or adaptation needs them and the user gave no ``--slice-profile`` (0.5-1 s measured
    on the 3x benchmark volumes)."""
    thick = single_thick_axis(options)
    needed = config.acquisition_features or options.adapt_steps > 0
    if thick is None or not needed or (options.slice_profile and options.adapt_steps <= 0):
        return None
    from bids_mrisr.sr.acquisition import estimate_acquisition

    with devices.cpu_threads(options.threads):
        return estimate_acquisition(volume, thick, options.axis_factors[thick],
                                    options.slice_thickness_ratio or 1.0, options.seed)


def told_acquisition(options: SROptions, thick: int | None,
                     ) -> tuple[float | None, str | None, float | None]:
    """What a conditioned network is told about one pass (None: unknown): the factor from the
    header; the profile from ``--slice-profile`` or the scan's spectrum (set by
    :func:`~bids_mrisr.sr.inference.run_model`), for a single thick axis only; the width from
    ``SliceThickness``."""
    if thick is None or options.axis_factors is None:
        return None, None, None
    profile = options.slice_profile if single_thick_axis(options) is not None else None
    return float(options.axis_factors[thick]), profile, options.slice_thickness_ratio


def acquisition_input(config: ModelConfig, options: SROptions, thick: int | None,
                      ) -> torch.Tensor | None:
    """[1, F] acquisition code of one pass for a conditioned network (None: a blind one)."""
    if not config.acquisition_features:
        return None
    factor, profile, ratio = told_acquisition(options, thick)
    code = ([0.0] * config.acquisition_features if factor is None  # the family's average
            else acquisition_code(factor, profile, ratio))
    return torch.tensor([code], dtype=torch.float32)


def describe_acquisition(options: SROptions, thick: int | None) -> dict[str, Any]:
    """What a conditioned network was told about one pass, for the sidecar."""
    factor, profile, ratio = told_acquisition(options, thick)
    return {
        "Axis": thick,
        "Factor": "unknown" if factor is None else round(factor, 4),
        "SliceProfile": profile or "unknown",
        "SliceWidth": f"{ratio:g} x slice spacing" if ratio else "unknown",
    }
