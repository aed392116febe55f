"""The steps around the network that use the scan itself: per-scan adaptation of a copy of the
network before it runs (``sr/adapt.py``), and one step toward the scan's own slices after it
(``sr/consistency.py``); each records what it did for the sidecar, or why it did not run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr.options import SRError, SROptions, SRResult

if TYPE_CHECKING:
    from bids_mrisr.sr.acquisition_input import PassAcquisition

log = logging.getLogger(__name__)


def maybe_adapt(model: torch.nn.Module, volume: np.ndarray, acquisition: PassAcquisition | None,
                options: SROptions, sha256: str, progress: Callable[[int, int], None] | None,
                ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Fine-tune a copy on the scan's own in-plane detail when asked (``adapt_steps`` > 0) and
    the scan has exactly one thick axis (``acquisition``, else None); say why not otherwise."""
    if options.adapt_steps <= 0:
        return model, None
    if acquisition is None:
        reason = "skipped: the input has no single thick axis (isotropic or unknown geometry)"
        log.info("adaptation %s", reason)
        return model, {"Status": reason}
    if model.config.prediction_type != "mean":
        raise SRError("--adapt needs a posterior-mean regressor checkpoint (the shipped "
                      f"student); this {model.config.kind} checkpoint is a diffusion model")
    from bids_mrisr.sr.adapt import AdaptOptions, adapt_model

    threads = options.threads if next(model.parameters()).device.type == "cpu" else None
    log.info("adapting the model to this scan: noise and slice profile from its voxels, then %d "
             "steps on its own in-plane detail", options.adapt_steps)
    with devices.cpu_threads(threads):
        adapted, info = adapt_model(
            model, volume, acquisition, AdaptOptions(steps=options.adapt_steps,
                                                     seed=options.seed),
            progress=progress)
    log.info("adapted to this scan in %.1f s (%d steps; loss on its own pairs %.4f -> %.4f; "
             "slice profile %s, noise sigma %.4f)", info["Seconds"], info["Steps"],
             info["LossBefore"], info["LossAfter"], info["SliceProfile"], info["NoiseSigma"])
    return adapted, {"Status": "adapted", "StartWeightsSHA256": sha256, **info}


def make_consistent(result: SRResult, volume: np.ndarray, acquisition: PassAcquisition | None,
                    options: SROptions) -> None:
    """Pull the estimate toward the scan's own slices (``sr/consistency.py``) for an input with
    one thick axis (``acquisition``), with its told slice-profile shape (unknown: the mixture).
    Records it."""
    if not options.input_consistency or acquisition is None:
        return
    from bids_mrisr.sr.acquisition import noise_sigma
    from bids_mrisr.sr.consistency import project_onto_input

    start = time.perf_counter()
    axis, factor, profile, width = (acquisition.axis, acquisition.factor, acquisition.profile,
                                    acquisition.width)
    with devices.cpu_threads(options.threads):
        estimate = acquisition.estimate
        sigma = estimate.noise_sigma if estimate is not None else noise_sigma(volume, axis)
        result.image, report = project_onto_input(result.image, volume, axis, factor, profile,
                                                  sigma, width)
    result.info["InputConsistency"] = {
        **report.as_sidecar(profile, width),
        "NoiseSigma": round(sigma, 5), "Seconds": round(time.perf_counter() - start, 2)}
    log.info("consistency with the input slices: residual RMS %.4f -> %.4f (%.0f %% of it "
             "kept)", report.residual_before, report.residual_after, 100 * report.kept_fraction)
