"""The engine API: ``run_model`` (checkpoint in ``options.weights``) and ``run_loaded`` (any
loaded network that follows the ``bids_mrisr.sr.networks`` call contract, ``route(cond)`` and
``model(x_t, cond, t, gates=, active_experts=)`` returning a v prediction, so tests can drive it
with stand-ins).

This module decides (estimate, views, passes) and orchestrates; the parts live beside it:
weight variants and loading in :mod:`~bids_mrisr.sr.variants`, what a conditioned network is told
in :mod:`~bids_mrisr.sr.acquisition_input`, batch and tile planning in
:mod:`~bids_mrisr.sr.planning`, the passes (slices, batches, tiles, MoE expert skipping, seeded
noise) in :mod:`~bids_mrisr.sr.passes`, and the sidecar record in :mod:`~bids_mrisr.sr.provenance`.

For every plane the volume is cut into slices; each slice is conditioned on its 2m+1 neighbours
(edge-replicated), the residual over the cubic estimate is sampled by DDIM from seeded noise, and
``centre + residual / residual_scale`` is added into one float32 accumulator shared by the planes
(no per-plane copies of the volume).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr import provenance, slicing
from bids_mrisr.sr.acquisition_input import (
    PassAcquisition,
    only_thick_axis,
    pass_acquisitions,
    told_acquisitions,
)
from bids_mrisr.sr.checkpoint import read_config
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.options import VIEW_COUNTS, SRError, SROptions, SRResult
from bids_mrisr.sr.passes import Counter, Estimate, Geometry, Sampling
from bids_mrisr.sr.planning import Plan, plan_memory, with_tiles
from bids_mrisr.sr.refinement import make_consistent, maybe_adapt
from bids_mrisr.sr.resume import BatchStore, resume_key
from bids_mrisr.sr.variants import load, variant_name, weights_for_geometry, weights_for_profile
from bids_mrisr.sr.views import restore_views

DEFAULT_STEPS = {"teacher": 20, "student": 2}
EXTRA_DRAW_ETA = 1.0
"""eta used for N > 1 draws when the user left eta at 0: all N draws then share one stochastic
sampler (DDPM-like noise at every step), so their mean and spread describe one distribution."""
FLIP_VIEWS: tuple[tuple[int, ...], ...] = (
    (), (0, 1, 2), (0,), (1, 2), (1,), (0, 2), (2,), (0, 1))
"""Flips of the volume a self-ensemble of N views averages: the first N of these (N = 1, 2, 4
or 8). The networks are trained with flipped crops and the slice profiles are symmetric, so
every flip is an equally valid view of the scan; averaging views cancels part of the network's
own error. The order puts a view and its complement next to each other."""
AUTO_VIEWS_THICK = 2
"""Views when the input has one thick axis and --flip-views is auto. Such a scan is restored in
two planes in seconds, and the second view added +0.02 to +0.11 dB (median +0.07) over one
in all 36 held-out 3x cases of benchmarks/quality.py (shipped student; benchmarks/EXPERIMENTS.md).
Other inputs (isotropic low resolution: three passes) keep one view, and their speed."""


def run_model(
    volume: np.ndarray, options: SROptions, progress: Callable[[int, int], None] | None = None,
    resume_dir: Path | None = None,
) -> SRResult:
    """Super-resolve with the checkpoint in ``options.weights`` (never with random weights);
    ``resume_dir`` keeps finished batches so an interrupted call resumes (sr/resume.py)."""
    if options.weights is None:
        raise SRError(
            f"no trained weights are available for the {options.method} model yet; "
            "pass --weights DIR pointing at a bids_mrisr checkpoint"
        )
    device = devices.resolve_device(options.device)
    root = Path(options.weights)
    weights = weights_for_geometry(root, options.blurred_axes)
    acquisitions = pass_acquisitions(read_config(weights), volume, options)
    single = only_thick_axis(acquisitions)
    weights = weights_for_profile(root, weights, single is not None and single.profile == "box")
    variant = variant_name(root, weights)
    ckpt = load(weights, device, options.method, dict(options.weights_sha256).get(variant or ""))
    prov = dict(ckpt.provenance or {})
    name = f"{root.name}/{variant}" if variant is not None else (root.name or ckpt.config.kind)
    model, adaptation = maybe_adapt(ckpt.model, volume, single, options, ckpt.sha256, progress)
    result = run_loaded(
        volume,
        model,
        ckpt.config,
        options,
        device=device,
        sha256=ckpt.sha256,
        model_name=str(name),
        default_steps=provenance.provenance_steps(prov),
        progress=progress,
        resume_dir=resume_dir,
        acquisitions=acquisitions,
    )
    make_consistent(result, volume, single, options)
    provenance.add_weights(result.info, prov, variant, adaptation)
    return result


def flip_views(options: SROptions, one_call: bool = True) -> tuple[tuple[int, ...], ...]:
    """The flips of the volume whose restorations are averaged (see ``FLIP_VIEWS``).

    ``one_call``: the network runs once per slice (a mean estimate, as the shipped student
    does); ``auto`` leaves multi-step sampling (draws) at one view, whose cost it would double.
    """
    count = options.flip_views
    if count is None:
        thick = len(options.blurred_axes or ()) == 1
        count = AUTO_VIEWS_THICK if thick and one_call else 1
    if count not in VIEW_COUNTS:
        raise SRError(f"flip views must be one of {', '.join(map(str, VIEW_COUNTS))}, "
                      f"got {count}")
    return FLIP_VIEWS[:count]


def _checked(volume: np.ndarray, options: SROptions) -> np.ndarray:
    """The volume as contiguous float32, after checking it and the options the engine reads."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise SRError(f"super-resolution expects a 3D volume, got shape {volume.shape}")
    planes = tuple(options.planes)
    bad = [p for p in planes if p not in slicing.PLANE_AXES]
    if not planes or bad or len(set(planes)) != len(planes):
        raise SRError(f"planes must be distinct names among {sorted(slicing.PLANE_AXES)}")
    blurred = options.blurred_axes
    if blurred is not None and (any(a not in (0, 1, 2) for a in blurred)
                                or len(set(blurred)) != len(blurred)):
        raise SRError(f"blurred_axes must be distinct axes among 0, 1, 2, got {blurred}")
    if options.num_samples < 1:
        raise SRError("num_samples must be >= 1")
    if options.eta < 0:
        raise SRError("eta must be >= 0")
    return volume


def _estimate(config: ModelConfig, options: SROptions, default_steps: int | None) -> Estimate:
    """PSNR rewards the posterior mean; one diffusion draw has about twice its squared error.
    So the default output is a mean estimate: a mean regressor's one pass, or for a diffusion
    model its one-step prediction from t = T-1 (its estimate of the mean). Draws run when asked
    for (--steps for a single draw, --num-samples N for the mean of N and an uncertainty map)."""
    direct = config.prediction_type == "mean"
    n = 1 if direct else options.num_samples
    if direct or (options.steps is None and n == 1):
        steps = 1
    else:
        steps = options.steps or default_steps or DEFAULT_STEPS.get(config.kind, 20)
    if steps < 1:
        raise SRError(f"steps must be >= 1, got {steps}")
    if direct:
        name = "posterior mean (direct regression)"
    elif steps == 1 and n == 1:
        name = "posterior mean (one v-prediction step from t = T-1)"
    else:
        name = f"mean of {n} draws" if n > 1 else "single draw"
    eta = options.eta if (n == 1 or options.eta > 0) else EXTRA_DRAW_ETA
    return Estimate(direct, n, steps, eta, name)


def _geometry(volume: np.ndarray, config: ModelConfig, options: SROptions, device: torch.device,
              param_bytes: int, views: int, tile: int | None,
              acquisitions: tuple[PassAcquisition, ...]) -> Geometry:
    """One pass per blurred axis (coarsest first), each in the planes that contain that axis
    with it along the slice rows, as the networks are trained (None: one pass, all planes as
    given); a memory plan per pass and plane; the acquisition of each pass."""
    axes = [value.axis for value in acquisitions]
    planes = [slicing.planes_for_geometry(tuple(options.planes), thick) for thick in axes]
    plans: dict[tuple[int, str], Plan] = {}
    for i, thick in enumerate(axes):
        for p in planes[i]:
            planar_shape = tuple(slicing.planar_view(volume, slicing.PLANE_AXES[p], thick).shape)
            plan = plan_memory(config, planar_shape, volume.shape, options, device, param_bytes,
                               views)
            if tile is not None:
                with_tiles(plan, config, tile)
            plans[(i, p)] = plan
    return Geometry(acquisitions, planes, plans, config.acquisition_features)


def _network_calls(volume: np.ndarray, geometry: Geometry, est: Estimate,
                   views: tuple[tuple[int, ...], ...]) -> int:
    """Batches the run sends through the network, over passes, planes, draws, steps and views
    (the progress bar's total)."""
    batches = sum(len(slicing.batches(volume.shape[slicing.PLANE_AXES[p]], plan.batch_size))
                  for (_, p), plan in geometry.plans.items())
    return batches * est.n * est.steps * len(views)


def _normalise(gates: np.ndarray) -> None:
    """Gates summed over passes, planes and views, scaled in place to sum to 1 over experts."""
    gsum = gates.sum(axis=0)
    np.maximum(gsum, np.float32(1e-12), out=gsum)
    gates /= gsum[None]


def run_loaded(
    volume: np.ndarray,
    model: torch.nn.Module,
    config: ModelConfig,
    options: SROptions,
    *,
    device: torch.device | None = None,
    sha256: str = "",
    model_name: str = "",
    default_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tile: int | None = None,
    resume_dir: Path | None = None,
    acquisitions: tuple[PassAcquisition, ...] | None = None,
) -> SRResult:
    """The engine proper, for an already loaded network (see module docstring).

    ``tile`` forces an in-plane tile size (tests, expert use); normally the memory budget
    (``options.max_memory_gb``) decides. ``resume_dir``: where finished batches are kept.
    ``acquisitions``: one per pass (:func:`~bids_mrisr.sr.acquisition_input.pass_acquisitions`);
    by default what the options tell, without reading the scan.
    """
    volume = _checked(volume, options)
    if options.blurred_axes is not None and not options.blurred_axes:  # at the target grid
        if progress is not None:
            progress(1, 1)
        return SRResult(image=volume.copy(),
                        info=provenance.nothing_restored(config.kind, model_name, sha256))
    device = device or devices.resolve_device(options.device)
    est = _estimate(config, options, default_steps)
    views = flip_views(options, one_call=est.steps == 1 and est.n == 1)
    teacher = config.kind == "teacher"
    k = config.num_experts if teacher else 0
    model.eval()
    # channels-last lets oneDNN pick its blocked NHWC convolution kernels: measured 1.7x faster
    # for the student and ~1.2x for the teacher on 2 CPU cores (narrow layers, 256^2 slices).
    model = model.to(memory_format=torch.channels_last)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gates_acc = np.zeros((k, *volume.shape), np.float32) if teacher else None
    geometry = _geometry(volume, config, options, device, param_bytes, len(views), tile,
                         acquisitions or told_acquisitions(options))
    counter = Counter(_network_calls(volume, geometry, est, views), progress)
    store = BatchStore(resume_dir, resume_key(volume, model, (
        options, geometry.plans, geometry.acquisitions, views, est.steps, est.n, est.eta,
        str(device)))) if resume_dir else None
    schedule = config.noise_schedule()  # the one it was trained with (saved in model.json)
    run = Sampling(model, device, est.steps, est.eta, est.n, k, float(config.residual_scale),
                   config.context_slices, options.seed, options.gate_skip_threshold, est.direct,
                   schedule, counter)
    with devices.cpu_threads(options.threads if device.type == "cpu" else None) as nthreads:
        image, unc_out = restore_views(run, geometry, volume, views, gates_acc, store)
    if store is not None:
        store.report()
    if gates_acc is not None:
        _normalise(gates_acc)
    info = provenance.run_info(config, options, est, geometry, views, model_name=model_name,
                               sha256=sha256, device=device, stats=counter.stats,
                               nthreads=nthreads)
    return SRResult(image=image, gates=gates_acc, uncertainty=unc_out, info=info,
                    expert_names=list(config.expert_names) if teacher else [])
