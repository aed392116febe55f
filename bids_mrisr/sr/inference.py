"""Volume-to-volume 2.5D diffusion inference: planes, batches, tiles, fusion, uncertainty.

``run_model`` loads a checkpoint and calls :func:`run_loaded`, which works with any network that
follows the ``bids_mrisr.sr.networks`` call contract (``route(cond)`` and
``model(x_t, cond, t, gates=, active_experts=)`` returning a v prediction), so tests can drive it
with stand-ins.

For every plane the volume is cut into slices; each slice is conditioned on its 2m+1 neighbours
(edge-replicated), the residual over the cubic estimate is sampled by DDIM from seeded noise, and
``centre + residual / residual_scale`` is added into one float32 accumulator shared by the planes
(no per-plane copies of the volume). Noise comes from one generator per (seed, plane, slice,
sample), so batching and tiling do not change which noise a slice sees.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bids_mrisr.sr import device as devices
from bids_mrisr.sr import provenance, slicing
from bids_mrisr.sr.acquisition_input import acquisition_input, scan_estimate, single_thick_axis
from bids_mrisr.sr.options import VIEW_COUNTS, SRError, SROptions, SRResult
from bids_mrisr.sr.passes import sample_batch
from bids_mrisr.sr.planning import Plan, plan_memory, with_tiles
from bids_mrisr.sr.resume import BatchStore, resume_key
from bids_mrisr.sr.variants import BOX_WEIGHTS, load, weights_for_geometry, weights_variant

if TYPE_CHECKING:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate

log = logging.getLogger(__name__)

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
    weights = weights_for_geometry(Path(options.weights), options.blurred_axes)
    ckpt = load(weights, device, options.method)
    estimate = scan_estimate(ckpt.config, volume, options)
    asked, given = options, options.slice_profile
    if estimate is not None:
        from bids_mrisr.sr.acquisition import profile_to_tell

        options = dataclasses.replace(
            options, slice_profile=profile_to_tell(options.slice_profile, estimate))
    box = weights_variant(Path(options.weights), BOX_WEIGHTS)
    if (weights == Path(options.weights) and box is not None and options.slice_profile == "box"
            and single_thick_axis(options) is not None):
        weights = box
        ckpt = load(weights, device, options.method)
    variant = weights.name if weights != Path(options.weights) else None
    prov = dict(ckpt.provenance or {})
    name = Path(ckpt.path).name or ckpt.config.kind
    if variant is not None:
        name = f"{Path(options.weights).name}/{variant}"
    model, adaptation = _maybe_adapt(ckpt.model, volume, asked, ckpt.sha256, progress, estimate)
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
    )
    _make_consistent(result, volume, options, estimate)
    provenance.add_weights_and_sources(result.info, prov, variant, options, given, estimate,
                                       adaptation)
    return result

def _make_consistent(result: SRResult, volume: np.ndarray, options: SROptions,
                     estimate: AcquisitionEstimate | None) -> None:
    """Pull the estimate toward the scan's own slices (``sr/consistency.py``) for an input with
    one thick axis, with the told slice-profile shape (unknown: the mixture). Records it."""
    thick = single_thick_axis(options)
    if not options.input_consistency or thick is None:
        return
    from bids_mrisr.sr.acquisition import noise_sigma
    from bids_mrisr.sr.consistency import project_onto_input

    start = time.perf_counter()
    with devices.cpu_threads(options.threads):
        sigma = estimate.noise_sigma if estimate is not None else noise_sigma(volume, thick)
        result.image, report = project_onto_input(
            result.image, volume, thick, options.axis_factors[thick], options.slice_profile,
            sigma, options.slice_thickness_ratio)
    result.info["InputConsistency"] = {
        **report.as_sidecar(options.slice_profile, options.slice_thickness_ratio),
        "NoiseSigma": round(sigma, 5), "Seconds": round(time.perf_counter() - start, 2)}
    log.info("consistency with the input slices: residual RMS %.4f -> %.4f (%.0f %% of it "
             "kept)", report.residual_before, report.residual_after, 100 * report.kept_fraction)


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


def _maybe_adapt(model: torch.nn.Module, volume: np.ndarray, options: SROptions, sha256: str,
                 progress: Callable[[int, int], None] | None,
                 estimate: AcquisitionEstimate | None = None,
                 ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Fine-tune a copy on the scan's own in-plane detail when asked (``adapt_steps`` > 0) and
    the scan has exactly one thick axis; say why not otherwise."""
    if options.adapt_steps <= 0:
        return model, None
    thick = single_thick_axis(options)
    if thick is None:
        reason = "skipped: the input has no single thick axis (isotropic or unknown geometry)"
        log.info("adaptation %s", reason)
        return model, {"Status": reason}
    if getattr(model.config, "prediction_type", None) != "mean":
        raise SRError("--adapt needs a posterior-mean regressor checkpoint (the shipped "
                      f"student); this {model.config.kind} checkpoint is a diffusion model")
    from bids_mrisr.sr.adapt import AdaptOptions, adapt_model

    threads = options.threads if next(model.parameters()).device.type == "cpu" else None
    log.info("adapting the model to this scan: noise and slice profile from its voxels, then %d "
             "steps on its own in-plane detail", options.adapt_steps)
    with devices.cpu_threads(threads):
        adapted, info = adapt_model(
            model, volume, thick, options.axis_factors[thick],
            AdaptOptions(steps=options.adapt_steps, seed=options.seed,
                         thickness_ratio=options.slice_thickness_ratio,
                         profile=options.slice_profile,
                         profile_source=options.slice_profile_source),
            progress=progress, estimate=estimate)
    log.info("adapted to this scan in %.1f s (%d steps; loss on its own pairs %.4f -> %.4f; "
             "slice profile %s, noise sigma %.4f)", info["Seconds"], info["Steps"],
             info["LossBefore"], info["LossAfter"], info["SliceProfile"], info["NoiseSigma"])
    return adapted, {"Status": "adapted", "StartWeightsSHA256": sha256, **info}


def run_loaded(
    volume: np.ndarray,
    model: torch.nn.Module,
    config: Any,
    options: SROptions,
    *,
    device: torch.device | None = None,
    sha256: str = "",
    model_name: str = "",
    default_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tile: int | None = None,
    resume_dir: Path | None = None,
) -> SRResult:
    """The engine proper, for an already loaded network (see module docstring).

    ``tile`` forces an in-plane tile size (tests, expert use); normally the memory budget
    (``options.max_memory_gb``) decides. ``resume_dir``: where finished batches are kept.
    """
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
    if blurred is not None and not blurred:  # already at the target resolution
        if progress is not None:
            progress(1, 1)
        return SRResult(image=volume.copy(),
                        info=provenance.nothing_restored(config.kind, model_name, sha256))
    # One pass per blurred axis (coarsest first), each in the planes that contain that axis with
    # it along the slice rows, as the networks are trained; None: one pass, all planes as given.
    passes: list[int | None] = [None] if blurred is None else list(blurred)
    pass_planes = [slicing.planes_for_geometry(planes, thick) for thick in passes]
    device = device or devices.resolve_device(options.device)
    direct = getattr(config, "prediction_type", "v") == "mean"
    # PSNR rewards the posterior mean; one diffusion draw has about twice its squared error.
    # So the default output is a mean estimate: a mean regressor's one pass, or for a diffusion
    # model its one-step prediction from t = T-1 (its estimate of the mean). Draws run when asked
    # for (--steps for a single draw, --num-samples N for the mean of N and an uncertainty map).
    n = 1 if direct else options.num_samples
    if direct or (options.steps is None and n == 1):
        steps = 1
    else:
        steps = options.steps or default_steps or DEFAULT_STEPS.get(config.kind, 20)
    if steps < 1:
        raise SRError(f"steps must be >= 1, got {steps}")
    views = flip_views(options, one_call=steps == 1 and n == 1)
    if direct:
        estimate = "posterior mean (direct regression)"
    elif steps == 1 and n == 1:
        estimate = "posterior mean (one v-prediction step from t = T-1)"
    else:
        estimate = f"mean of {n} draws" if n > 1 else "single draw"
    eta = options.eta if (n == 1 or options.eta > 0) else EXTRA_DRAW_ETA
    teacher = config.kind == "teacher"
    k = config.num_experts if teacher else 0
    m = config.context_slices
    scale = float(config.residual_scale)

    model.eval()
    # channels-last lets oneDNN pick its blocked NHWC convolution kernels: measured 1.7x faster
    # for the student and ~1.2x for the teacher on 2 CPU cores (narrow layers, 256^2 slices).
    model = model.to(memory_format=torch.channels_last)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gates_acc = np.zeros((k, *volume.shape), np.float32) if teacher else None

    plans: dict[tuple[int, str], Plan] = {}
    for i, thick in enumerate(passes):
        for p in pass_planes[i]:
            planar_shape = tuple(slicing.planar_view(volume, slicing.PLANE_AXES[p], thick).shape)
            plan = plan_memory(config, planar_shape, volume.shape, options, device, param_bytes,
                               len(views))
            if tile is not None:
                with_tiles(plan, config, tile)
            plans[(i, p)] = plan
    total = sum(
        len(slicing.batches(volume.shape[slicing.PLANE_AXES[p]], plan.batch_size))
        for (_, p), plan in plans.items()
    ) * n * steps * len(views)
    done = 0
    stats = {"skipped": 0, "evaluated": 0}

    def tick(*_: Any) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    store = BatchStore(resume_dir, resume_key(volume, model, (
        options, plans, views, steps, n, eta, str(device)))) if resume_dir else None
    codes = [acquisition_input(config, options, thick) for thick in passes]
    # The schedule the network was trained with (saved in model.json; stand-ins: the default).
    schedule = config.noise_schedule() if hasattr(config, "noise_schedule") else None

    def restore(current: np.ndarray, flips: tuple[int, ...],
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every pass over one view of the volume (``flips`` applied): the image and its summed
        variance, in the view's orientation; gates go straight into ``gates_acc``."""
        unc_sq = np.zeros_like(current) if n > 1 else None
        view_name = "view" + ("".join(map(str, flips)) or "-")

        def compute(planar: torch.Tensor, sl: range, p: str, plan: Plan, i: int,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
            cond = slicing.condition_stack(planar, sl, m).to(device).contiguous(
                memory_format=torch.channels_last)
            return sample_batch(
                model, cond, sl, p, plan, scale, options, steps, eta, n, k, device, stats,
                tick, direct, pass_index=i, schedule=schedule,
                acquisition=None if codes[i] is None else codes[i].to(device))

        with torch.inference_mode():
            for i, thick in enumerate(passes):
                out = np.zeros_like(volume)
                unc = np.zeros_like(volume) if n > 1 else None
                vol_t = torch.from_numpy(current)
                for p in pass_planes[i]:
                    axis = slicing.PLANE_AXES[p]
                    planar = slicing.planar_view(vol_t, axis, thick)
                    plan = plans[(i, p)]
                    for sl in slicing.batches(planar.shape[0], plan.batch_size):
                        batch = functools.partial(compute, planar, sl, p, plan, i)
                        res, std, gates = batch() if store is None else store.batch(
                            f"{view_name}_pass{i}_{p}_{sl.start}-{sl.stop}", batch, stats,
                            replay)
                        centre = planar[sl.start : sl.stop].numpy()
                        slicing.planar_view(out, axis, thick)[sl.start : sl.stop] += (
                            centre + res / scale)
                        if unc is not None and std is not None:
                            slicing.planar_view(unc, axis, thick)[sl.start : sl.stop] += (
                                std / scale)
                        if gates_acc is not None and gates is not None:
                            for e in range(k):  # written through, in this view's flips
                                g_view = slicing.planar_view(np.flip(gates_acc[e], flips),
                                                             axis, thick)
                                g_view[sl.start : sl.stop] += gates[:, e]
                inv = np.float32(1.0 / len(pass_planes[i]))
                out *= inv
                if unc is not None and unc_sq is not None:
                    unc *= inv
                    unc_sq += unc * unc  # passes add independent variances
                del vol_t
                current = out
        return current, unc_sq

    def replay() -> None:
        """The progress ticks of a batch loaded instead of computed."""
        for _ in range(n * steps):
            tick()

    image: np.ndarray | None = None
    unc_sq: np.ndarray | None = None
    with devices.cpu_threads(options.threads if device.type == "cpu" else None) as nthreads:
        for flips in views:  # each view is flipped in, restored, and flipped back
            view = np.ascontiguousarray(np.flip(volume, flips)) if flips else volume
            restored, var = restore(view, flips)
            del view
            if flips:
                restored = np.flip(restored, flips)
                var = None if var is None else np.flip(var, flips)
            if image is None:
                image, unc_sq = np.ascontiguousarray(restored), var
            else:
                image += restored
                if unc_sq is not None and var is not None:
                    unc_sq += var
    if len(views) > 1:  # mean image; mean variance of the views
        image *= np.float32(1.0 / len(views))
        if unc_sq is not None:
            unc_sq *= np.float32(1.0 / len(views))
    unc_out = np.sqrt(unc_sq, out=unc_sq) if unc_sq is not None else None
    if store is not None:
        store.report()
    if gates_acc is not None:
        gsum = gates_acc.sum(axis=0)
        np.maximum(gsum, np.float32(1e-12), out=gsum)
        gates_acc /= gsum[None]
        del gsum
    info = provenance.run_info(
        config, options, model_name=model_name, sha256=sha256, steps=steps, direct=direct,
        estimate=estimate, passes=passes, pass_planes=pass_planes, eta=eta, n=n, device=device,
        views=views, plans=plans, stats=stats, nthreads=nthreads,
        conditioned=any(code is not None for code in codes))
    return SRResult(
        image=image,
        gates=gates_acc,
        expert_names=list(getattr(config, "expert_names", ())) if teacher else [],
        uncertainty=unc_out,
        info=info,
    )
