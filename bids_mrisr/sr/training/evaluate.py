"""Held-out metrics: simulate a thick-slice scan of an HR volume, super-resolve it, compare."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bids_mrisr.image.spline import cubic_resample_axis
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.engine import SROptions
from bids_mrisr.sr.inference import run_loaded
from bids_mrisr.sr.pairs import FOREGROUND_THRESHOLD


def psnr(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, peak: float) -> float:
    mse = float(np.mean((x[mask].astype(np.float64) - ref[mask]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def ssim(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, peak: float,
         sigma: float = 1.5) -> float:
    """3D Gaussian-window SSIM (Wang et al. 2004 constants), averaged in ``mask``."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    x = x.astype(np.float32)
    y = ref.astype(np.float32)

    def g(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="nearest")

    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap[mask].mean())


def scoring_mask(truth: np.ndarray) -> tuple[np.ndarray, float]:
    """The head mask and peak every score uses: the filled region above 5 % of the truth's
    99.9th percentile, and that percentile (any intensity units, raw scanner values included)."""
    top = float(np.percentile(truth, 99.9))
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(truth > 0.05 * top, iterations=2))
    return mask, top


def score_in_head(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM against ``truth`` in its head mask, on the extent both volumes cover.

    Works in any intensity units (raw scanner values included): the peak is the truth's 99.9th
    percentile and the mask is the filled region above 5 % of it.
    """
    shape = tuple(min(a, b) for a, b in zip(estimate.shape, truth.shape, strict=True))
    est = np.asarray(estimate[: shape[0], : shape[1], : shape[2]], dtype=np.float32)
    ref = np.asarray(truth[: shape[0], : shape[1], : shape[2]], dtype=np.float32)
    mask, top = scoring_mask(ref)
    return {"psnr": psnr(est, ref, mask, top), "ssim": ssim(est, ref, mask, top)}


def simulate_lowres(hr: np.ndarray, factor: float = 3.0, axis: int = 2, seed: int = 0,
                    noise_fraction: float = 0.01) -> np.ndarray:
    """The fixed evaluation degradation, cubic-upsampled back onto the HR grid."""
    params = Degradation(axis=axis, factor=factor, noise_fraction=noise_fraction)
    low, _ = degrade(hr, (1.0, 1.0, 1.0), params, np.random.default_rng(seed))
    return cubic_resample_axis(low, axis, factor, hr.shape[axis])


def evaluate_volume(
    model: torch.nn.Module,
    config: Any,
    hr: np.ndarray,
    *,
    factor: float = 3.0,
    axis: int = 2,
    steps: int | None = None,
    seed: int = 0,
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal"),
    with_ssim: bool = True,
) -> dict[str, Any]:
    """PSNR/SSIM of cubic and of the model against ``hr`` inside the head mask (hr > 0.05)."""
    hr = np.ascontiguousarray(hr, dtype=np.float32)
    cubic = simulate_lowres(hr, factor, axis, seed)
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training if isinstance(model, torch.nn.Module) else False
    result = run_loaded(
        cubic, model, config,
        SROptions(steps=steps, seed=seed, planes=tuple(planes), blurred_axes=(axis,),
                  axis_factors=tuple(float(factor) if a == axis else 1.0 for a in range(3)),
                  slice_profile="gaussian",  # what simulate_lowres simulates
                  flip_views=1),  # the network itself, comparable across checkpoints
        device=device,
    )
    if was_training:
        model.train()
    sr = result.image
    mask = hr > FOREGROUND_THRESHOLD
    peak = float(hr[mask].max()) if mask.any() else 1.0
    out: dict[str, Any] = {
        "factor": float(factor),
        "axis": int(axis),
        "planes": list(planes),
        "sampling_steps": int(result.info.get("SamplingSteps", steps or 0)),
        "psnr_cubic": psnr(cubic, hr, mask, peak),
        "psnr_model": psnr(sr, hr, mask, peak),
    }
    out["gain_db"] = out["psnr_model"] - out["psnr_cubic"]
    if with_ssim:
        out["ssim_cubic"] = ssim(cubic, hr, mask, peak)
        out["ssim_model"] = ssim(sr, hr, mask, peak)
    return out
