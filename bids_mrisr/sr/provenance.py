"""What a super-resolution run records about itself: the ``SuperResolution`` sidecar entries.

Assembled here from what the engine decided (model, sampling, passes, planes, views, plans)
and what it counted (expert evaluations), so the engine's loops carry no bookkeeping.
"""

from __future__ import annotations

from typing import Any

import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr import slicing
from bids_mrisr.sr.diffusion.sampler import CLIP_RESIDUAL
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.options import NOTHING_RESTORED, SROptions
from bids_mrisr.sr.passes import Estimate, Geometry
from bids_mrisr.sr.variants import VARIANT_USE


def provenance_steps(prov: dict[str, Any]) -> int | None:
    """The sampling steps the trainer recorded (``steps`` there counts optimisation steps)."""
    val = prov.get("sampling_steps")
    return val if isinstance(val, int) and val > 0 else None


def nothing_restored(kind: str, model_name: str, sha256: str) -> dict[str, Any]:
    """The record of a run whose input is already at the target resolution."""
    return {"Model": kind, "ModelName": model_name, "WeightsSHA256": sha256,
            "Restored": NOTHING_RESTORED, "RestoredAxes": []}


def run_info(
    config: ModelConfig, options: SROptions, est: Estimate, geometry: Geometry,
    views: tuple[tuple[int, ...], ...], *, model_name: str, sha256: str, device: torch.device,
    stats: dict[str, int], nthreads: int | None,
) -> dict[str, Any]:
    """The engine's record of one run (``stats``: expert evaluations and skips)."""
    planes = tuple(options.planes)
    passes, pass_planes, plans = geometry.axes, geometry.planes, geometry.plans
    steps, n, eta = est.steps, est.n, est.eta
    blurred = options.blurred_axes
    used = [p for p in slicing.PLANE_AXES if any(p in pp for pp in pass_planes)]
    info: dict[str, Any] = {
        "Model": config.kind,
        "ModelName": model_name,
        "WeightsSHA256": sha256,
        "SamplingSteps": steps,
        "Sampler": "direct posterior-mean regression" if est.direct else "DDIM",
        "Estimate": est.name,
        "RestoredAxes": None if blurred is None else list(blurred),
        "Passes": [{"Axis": thick, "Planes": list(pp)} for thick, pp in
                   zip(passes, pass_planes, strict=True)],
        "Eta": eta,
        "NumSamples": n,
        "Seed": options.seed,
        "Device": str(device),
        "Precision": devices.precision_name(device),
        "Planes": sorted(used, key=planes.index) if all(p in planes for p in used) else used,
        "PlaneFusion": "mean" if any(len(pp) > 1 for pp in pass_planes) else "none",
        "FlipViews": [list(flips) for flips in views],
        "ContextSlices": config.context_slices,
        "ResidualScale": float(config.residual_scale),
        "ClipResidual": CLIP_RESIDUAL,
        "BatchSize": {p: plan.batch_size for (_, p), plan in plans.items()},
        "TileSize": {p: plan.tile for (_, p), plan in plans.items()},
        "TileHalo": {p: plan.halo if plan.tile else None for (_, p), plan in plans.items()},
        "ExpertEvaluations": stats["evaluated"],
        "SkippedExpertEvaluations": stats["skipped"],
        "GateSkipThreshold": options.gate_skip_threshold,
        "Threads": nthreads if device.type == "cpu" else None,
    }
    if config.acquisition_features:  # a conditioned network: say what it was told
        told = [value.describe() for value in geometry.acquisitions]
        for i, entry in enumerate(told):  # a network told what each pass's input showed
            if i in geometry.noise_read:
                entry["InputNoise"] = round(geometry.noise_read[i], 5)
                entry["OtherCoarseAxes"] = len(geometry.still_coarse(i))
        info["AcquisitionInput"] = told
    if n > 1:
        info["UncertaintyMeasure"] = "voxel-wise standard deviation over draws (ddof=1)"
    return info


def add_weights(info: dict[str, Any], prov: dict[str, Any], variant: str | None,
                adaptation: dict[str, Any] | None) -> None:
    """Add to ``info`` what :func:`~bids_mrisr.sr.inference.run_model` knows beyond the engine:
    whether the weights were trained, their variant, and the adaptation."""
    if "trained" in prov:
        info["WeightsTrained"] = bool(prov["trained"])
    if variant is not None:
        info["WeightsVariant"] = f"{variant}: the checkpoint's variant for {VARIANT_USE[variant]}"
    if adaptation is not None:
        info["Adaptation"] = adaptation
