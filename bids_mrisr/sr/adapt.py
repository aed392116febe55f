"""Per-scan self-supervised adaptation: learn the scan's own contrast, noise and slice profile.

An anisotropic acquisition is sharp in-plane. Degrading the scan along one of its *in-plane*
axes, with its own thick-slice factor and slice profile, gives training pairs whose
low-resolution side looks like the scan's thick axis, in the scan's own intensities, noise and
anatomy (the idea of SMORE, Zhao et al. 2020, and ECLARE, Remedios et al. 2025); the slice
profile's shape and the noise level are read from the scan itself (``sr/acquisition.py``). A
copy of the pretrained mean regressor is fine-tuned on these pairs for a few hundred steps and
then averaged with the pretrained weights, so that a short, noisy adaptation cannot move far
from the prior. (An L2 pull toward the pretrained weights, L2-SP, was tried instead: it did
nothing until it was strong enough to hold adaptation back, and never beat the average.)
Weights never leave memory.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_mrisr.sr.acquisition import simulate_thick_axis
from bids_mrisr.sr.acquisition_input import FROM_SPECTRUM, PassAcquisition, read_scan
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.objectives import mean_regression_loss
from bids_mrisr.sr.options import UNKNOWN
from bids_mrisr.sr.pairs import PairSampler


@dataclass(frozen=True)
class AdaptOptions:
    """Knobs of one adaptation (defaults: about 20-40 s on 2 CPU cores)."""

    steps: int = 300
    batch_size: int = 8
    crop: int = 64
    lr: float = 3e-4
    keep_pretrained: float = 0.75
    """Final weights = keep * pretrained + (1 - keep) * adapted; 1 leaves the model as it was.
    0.75, not 0.5: on 18 validation cases (3x, every axis, both profiles, 2 % noise) 0.5 fell
    below the student in 5 (down to -0.025 dB, raw philips01 in 4 of 6), 0.75 in 1 (by 0.001),
    for a median of +0.08 against +0.13 dB (docs/adaptation.md)."""
    seed: int = 0
    match_noise: bool = True
    """Top the simulated thick slices' noise up to the scan's own (estimated in-plane)."""


def adaptation_sampler(volume: np.ndarray, thick_axis: int, factor: float, context_slices: int,
                       residual_scale: float, crop: int, seed: int,
                       thickness_ratio: float = 1.0, profile: str = "gaussian",
                       noise_sigma: float = 0.0) -> PairSampler:
    """Pairs from the scan's sharp in-plane axes, degraded with its own factor and profile.

    ``volume`` is the normalised scan on the target grid (sharp in-plane, blurred along
    ``thick_axis``). Each in-plane axis is degraded in turn, with noise topped up to the scan's
    ``noise_sigma``; crops are cut across the real thick axis, so that the simulated thick axis
    runs along the rows and the columns stay sharp, as the engine presents the real one.
    """
    if factor < 1 or thick_axis not in (0, 1, 2):
        raise ValueError(f"cannot adapt to thick axis {thick_axis} with factor {factor}")
    rng = np.random.default_rng(seed)
    pool = []
    for axis in (a for a in range(3) if a != thick_axis):
        cubic = simulate_thick_axis(volume, axis, factor, profile, thickness_ratio, noise_sigma,
                                    rng)
        pool.append((volume, cubic, Degradation(axis=axis, factor=float(factor),
                                                profile=profile,
                                                thickness_ratio=thickness_ratio)))
    return PairSampler([volume], context_slices, residual_scale, crop=crop, seed=seed,
                       slice_axis=thick_axis, remap_intensities=False, pool=pool)


def _adapted_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What adaptation trains: the whole student; a MoE mean teacher's experts only, so the
    routing stays the one training checked against uniform gates on many scans: adaptation
    changes what each expert does for this scan, not which expert does it."""
    if not hasattr(model, "experts"):
        return list(model.parameters())
    for module in (model.encoder, model.router):
        module.requires_grad_(False)
    return list(model.experts.parameters())


def adapt_model(model: nn.Module, volume: np.ndarray, acquisition: PassAcquisition,
                options: AdaptOptions, progress: Callable[[int, int], None] | None = None,
                pairs: PairSampler | None = None,
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Return an adapted copy of ``model`` (a mean regressor) and provenance for the sidecar.

    ``acquisition``: the scan's thick axis, factor, width and profile, as the engine tells the
    network (the scan's noise and shape are read here when it carries no reading).
    ``pairs`` replaces the scan's own pairs with ready-made ones, for benchmarks that measure
    what adaptation could reach with pairs from the truth (``benchmarks/adapt_ablation.py``);
    the app never passes it."""
    config = model.config
    if config.prediction_type != "mean":
        raise ValueError("adaptation needs a posterior-mean regressor (the shipped student)")
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    if acquisition.estimate is None:
        acquisition = read_scan(acquisition, volume, seed=options.seed)
    thick_axis, factor, ratio = acquisition.axis, acquisition.factor, acquisition.width or 1.0
    sigma = acquisition.estimate.noise_sigma if options.match_noise else 0.0
    sampler = pairs if pairs is not None else adaptation_sampler(
        volume, thick_axis, factor, config.context_slices, config.residual_scale, options.crop,
        options.seed, ratio, acquisition.simulated_profile, sigma)
    device = next(model.parameters()).device
    adapted = copy.deepcopy(model).to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    trained = _adapted_parameters(adapted)
    held = [sampler.sample(options.batch_size) for _ in range(4)]  # fixed pairs, for the record
    # A conditioned network is told what the engine will tell it for this scan.
    code = acquisition.code(config.code_width).to(device).expand(options.batch_size, -1)

    def held_loss(net: nn.Module) -> float:
        with torch.no_grad():
            return float(np.mean([float(mean_regression_loss(net, c.to(device), x.to(device),
                                                             code)[0])
                                  for c, x in held]))

    before = held_loss(adapted.eval())
    adapted.train()
    _fine_tune(adapted, trained, sampler, code, options, progress)
    with torch.no_grad():
        keep = float(np.clip(options.keep_pretrained, 0.0, 1.0))
        for p, a in zip(adapted.parameters(), anchor, strict=True):
            p.mul_(1 - keep).add_(a, alpha=keep)
    adapted.eval()
    after = held_loss(adapted)
    info = {
        "Steps": options.steps,
        "Seconds": round(time.perf_counter() - start, 2),
        "LossBefore": round(before, 5),
        "LossAfter": round(after, 5),
        "ThickAxis": thick_axis,
        "Factor": round(float(factor), 4),
        **_acquisition_record(acquisition, options, sigma),
    }
    return adapted, info


def _fine_tune(adapted: nn.Module, trained: list[nn.Parameter], sampler: PairSampler,
               code: torch.Tensor, options: AdaptOptions,
               progress: Callable[[int, int], None] | None) -> None:
    """Adam over ``trained`` on the scan's own pairs, the rate decaying to zero (cosine), so
    the last steps barely move."""
    device = code.device
    opt = torch.optim.Adam(trained, lr=options.lr)
    for step in range(options.steps):
        for group in opt.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / options.steps))
        cond, x0 = sampler.sample(options.batch_size)
        loss, _ = mean_regression_loss(adapted, cond.to(device), x0.to(device), code)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, options.steps)


def _acquisition_record(acquisition: PassAcquisition, options: AdaptOptions, sigma: float,
                        ) -> dict[str, Any]:
    """What adaptation simulated, and where each value came from, for the sidecar."""
    told = acquisition.profile != UNKNOWN
    return {
        "SliceProfile": f"{acquisition.simulated_profile} "
                        f"({acquisition.profile_source if told else FROM_SPECTRUM})",
        "SliceWidth": (f"{acquisition.width:g} x slice spacing (from SliceThickness)"
                       if acquisition.width else "slice spacing (default: no SliceThickness)"),
        "ProfileMisfit": acquisition.estimate.misfit,
        "NoiseSigma": round(sigma, 5),
        "KeepPretrained": options.keep_pretrained,
        "Seed": options.seed,
    }
