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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bids_mrisr import memory
from bids_mrisr.sr import device as devices
from bids_mrisr.sr import slicing
from bids_mrisr.sr.diffusion.sampler import CLIP_RESIDUAL, ddim_sample, randn
from bids_mrisr.sr.networks.config import MEAN_TIMESTEP, acquisition_code
from bids_mrisr.sr.options import VIEW_COUNTS, SRError, SROptions, SRResult
from bids_mrisr.sr.resume import BatchStore, resume_key

if TYPE_CHECKING:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate

log = logging.getLogger(__name__)

DEFAULT_STEPS = {"teacher": 20, "student": 2}
EXTRA_DRAW_ETA = 1.0
"""eta used for N > 1 draws when the user left eta at 0: all N draws then share one stochastic
sampler (DDPM-like noise at every step), so their mean and spread describe one distribution."""
DEFAULT_CPU_BUDGET_GB = 2.0
"""Activation budget used to pick a batch size on the CPU when no --mem limit is given."""
MIN_TILE = 32
TILE_OVERLAP = 16
"""Width of the blended strip between neighbouring tile cores."""
MIN_HALO = 16
"""Context each tile's network call sees beyond its core (in px, rounded up to the patch grid)."""
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


@dataclass
class _Plan:
    batch_size: int
    tile: int | None = None
    overlap: int = TILE_OVERLAP
    halo: int = 0
    align: int = 1


def _grid_align(config: Any) -> int:
    """Tiles start on the networks' coarsest internal grid (U-Net pooling after the stem, router
    patches and attention windows), so overlapping tiles see the same grids."""
    alignment = getattr(config, "tile_alignment", None)
    if alignment is not None:
        return int(alignment)
    return 2 ** max(0, len(getattr(config, "channel_mults", (1,))) - 1)


def _halo(align: int) -> int:
    """Context beyond a tile's core, a whole number of grid cells so windows stay aligned."""
    return -(-MIN_HALO // align) * align


def _smallest_window(config: Any) -> int:
    """Side of the smallest network call a tiled run can make: one grid cell plus halos."""
    align = _grid_align(config)
    return max(MIN_TILE, align) + 2 * _halo(align)


def _with_tiles(plan: _Plan, config: Any, core: int) -> _Plan:
    align = _grid_align(config)
    plan.align = align
    plan.halo = _halo(align)
    # A whole number of grid cells, at least one (and at least MIN_TILE px).
    plan.tile = max(-(-MIN_TILE // align) * align, core // align * align)
    plan.overlap = min(TILE_OVERLAP, plan.tile // 2)
    return plan


MULTI_AXIS_WEIGHTS = "multi-axis"
"""Sub-folder of a checkpoint with its variant for inputs coarse along several axes (e.g. 2 mm
isotropic). The app restores those one axis at a time, so each pass meets axes that are still
coarse and noise that interpolation smoothed in every coarse direction; the variant was trained
on such passes (``bids_mrisr train --multi-axis-rate``). Measured on the held-out 2x isotropic
benchmark cases it gains 0.1-1.5 dB over the single-axis weights, which in turn stay better on
single-axis inputs (docs/model-card.md)."""
BOX_WEIGHTS = "box"
"""Sub-folder of a checkpoint with its variant for inputs with one thick axis whose slice
profile is told ``box`` (``--slice-profile box``, a ``2D`` sidecar, or a clear reading of the
scan's spectrum). Box slices alias more and gain least; the variant is the checkpoint fine-tuned
on box profiles only (``bids_mrisr train --profiles box``), so one shape no longer shares the
network's capacity with the other (none ships; benchmarks/EXPERIMENTS.md)."""
VARIANTS = (MULTI_AXIS_WEIGHTS, BOX_WEIGHTS)
_VARIANT_USE = {MULTI_AXIS_WEIGHTS: "inputs coarse along several axes",
                BOX_WEIGHTS: "inputs with one thick axis told a box slice profile"}


def weights_variant(weights: Path, name: str) -> Path | None:
    """The checkpoint's variant ``name`` (one of :data:`VARIANTS`), if it has one."""
    variant = Path(weights) / name
    return variant if (variant / "model.json").is_file() else None


def weights_for_geometry(weights: Path, blurred_axes: tuple[int, ...] | None) -> Path:
    """``weights``, or its multi-axis variant where the input is coarse along several axes and
    the checkpoint has one."""
    if blurred_axes is not None and len(blurred_axes) > 1:
        variant = weights_variant(weights, MULTI_AXIS_WEIGHTS)
        if variant is not None:
            return variant
    return Path(weights)


def _load(weights: Path, device: torch.device, method: str) -> Any:
    """A verified checkpoint of the requested kind, its problems as :class:`SRError`."""
    from bids_mrisr.sr.checkpoint import load_checkpoint  # its errors are SRErrors already

    try:
        ckpt = load_checkpoint(weights, device)
    except OSError as exc:
        raise SRError(f"cannot read weights from {weights}: {exc}") from exc
    if ckpt.config.kind != method:
        raise SRError(
            f"the checkpoint in {weights} holds a {ckpt.config.kind} model but "
            f"--method {method} was requested"
        )
    return ckpt


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
    ckpt = _load(weights, device, options.method)
    estimate = _estimate_acquisition(ckpt.config, volume, options)
    asked, given = options, options.slice_profile
    if estimate is not None:
        from bids_mrisr.sr.acquisition import profile_to_tell

        options = dataclasses.replace(
            options, slice_profile=profile_to_tell(options.slice_profile, estimate))
    box = weights_variant(Path(options.weights), BOX_WEIGHTS)
    if (weights == Path(options.weights) and box is not None and options.slice_profile == "box"
            and _single_thick_axis(options) is not None):
        weights = box
        ckpt = _load(weights, device, options.method)
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
        default_steps=_provenance_steps(prov),
        progress=progress,
        resume_dir=resume_dir,
    )
    _make_consistent(result, volume, options, estimate)
    if "trained" in prov:
        result.info["WeightsTrained"] = bool(prov["trained"])
    if variant is not None:
        result.info["WeightsVariant"] = f"{variant}: the checkpoint's variant for " \
                                        f"{_VARIANT_USE[variant]}"
    for entry in result.info.get("AcquisitionInput", []):
        if entry["SliceProfile"] != "unknown":
            entry["SliceProfile"] += (f" ({options.slice_profile_source})" if given else
                                      " (estimated from the scan's spectrum)")
        elif estimate is not None and given is None:
            entry["SliceProfile"] += (f" (the scan's spectrum reads {estimate.profile}, which "
                                      "is told only when it reads box by a clear margin)")
    if adaptation is not None:
        result.info["Adaptation"] = adaptation
    return result


def _make_consistent(result: SRResult, volume: np.ndarray, options: SROptions,
                     estimate: AcquisitionEstimate | None) -> None:
    """Pull the estimate toward the scan's own slices (``sr/consistency.py``) for an input with
    one thick axis, with the told slice-profile shape (unknown: the mixture). Records it."""
    thick = _single_thick_axis(options)
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


def _single_thick_axis(options: SROptions) -> int | None:
    axes = options.blurred_axes or ()
    return axes[0] if len(axes) == 1 and options.axis_factors is not None else None


def _estimate_acquisition(config: Any, volume: np.ndarray, options: SROptions,
                          ) -> AcquisitionEstimate | None:
    """The scan's slice-profile shape and noise, read once from its voxels when a conditioned
    network or adaptation needs them and the user gave no ``--slice-profile`` (0.5-1 s measured
    on the 3x benchmark volumes)."""
    thick = _single_thick_axis(options)
    needed = getattr(config, "acquisition_features", 0) or options.adapt_steps > 0
    if thick is None or not needed or (options.slice_profile and options.adapt_steps <= 0):
        return None
    from bids_mrisr.sr.acquisition import estimate_acquisition

    with devices.cpu_threads(options.threads):
        return estimate_acquisition(volume, thick, options.axis_factors[thick],
                                    options.slice_thickness_ratio or 1.0, options.seed)


def _maybe_adapt(model: torch.nn.Module, volume: np.ndarray, options: SROptions, sha256: str,
                 progress: Callable[[int, int], None] | None,
                 estimate: AcquisitionEstimate | None = None,
                 ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Fine-tune a copy on the scan's own in-plane detail when asked (``adapt_steps`` > 0) and
    the scan has exactly one thick axis; say why not otherwise."""
    if options.adapt_steps <= 0:
        return model, None
    thick = _single_thick_axis(options)
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


def _provenance_steps(prov: dict[str, Any]) -> int | None:
    """The sampling steps the trainer recorded (``steps`` there counts optimisation steps)."""
    val = prov.get("sampling_steps")
    return val if isinstance(val, int) and val > 0 else None


def _seed_for(seed: int, plane: str, index: int, sample: int, pass_index: int = 0) -> int:
    """Independent, order-free stream for one (pass, plane, slice, sample)."""
    key = [seed & 0xFFFFFFFF, slicing.PLANE_IDS[plane], index, sample]
    ss = np.random.SeedSequence(key + ([pass_index] if pass_index else []))
    return int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


def activation_bytes_per_pixel(config: Any) -> int:
    """Rough peak activation bytes per in-plane pixel of one slice (a planning heuristic).

    U-Net: the skip tensors of every level plus a few working tensors, at 1/4 the pixels per
    level down; experts run one after another. Router: token features and windowed attention.
    A factor 2 covers allocator slack and the conv workspace.
    """
    base = getattr(config, "base_width", 8)
    mults = getattr(config, "channel_mults", (1, 2, 2, 4))
    rb = getattr(config, "num_res_blocks", 1)
    ch = sum(base * mu * (rb + 7) / 4**lvl for lvl, mu in enumerate(mults))
    ch += 3 * config.in_condition_channels + 8
    if config.kind == "teacher":
        ps = getattr(config, "patch_sizes", (16, 8, 4))
        emb = getattr(config, "embed_dim", 64)
        tokens_pp = sum(1.0 / p**2 for p in ps)
        ch += tokens_pp * emb * 12 + 2 * config.num_experts
        win = getattr(config, "window_size", 4)
        if win > 0:
            n_tok = sum((win * ps[0] // p) ** 2 for p in ps)
            ch += n_tok * n_tok * getattr(config, "num_heads", 4) / (win * ps[0]) ** 2
    return int(4 * ch * 2)


def plan_memory(
    config: Any,
    shape: tuple[int, int, int],
    volume_shape: tuple[int, ...],
    options: SROptions,
    device: torch.device,
    param_bytes: int,
    views: int = 1,
) -> _Plan:
    """Pick slices per batch and (under a memory budget) an in-plane tile size (``views``:
    flipped views of the volume restored one after another)."""
    num, h, w = shape
    bpp = activation_bytes_per_pixel(config)
    if options.max_memory_gb is not None:
        k = config.num_experts if config.kind == "teacher" else 0
        extra = k + (1 if options.num_samples > 1 else 0)  # gates, std
        extra += memory.VIEW_VOLUMES if views > 1 else 0  # a flipped copy, the views' mean
        fixed = memory.untileable_bytes(int(np.prod(volume_shape)), extra) + param_bytes
        budget = options.max_memory_gb * 1e9 - fixed
        smallest = bpp * _smallest_window(config) ** 2
        if budget < smallest:
            raise SRError(
                f"--mem {options.max_memory_gb:g} GB is too small for this volume even in the "
                f"smallest tiles: it needs about {(fixed + smallest) / 1e9:.2f} GB"
            )
    else:
        free = devices.free_memory_bytes(device)
        budget = 0.5 * free if free is not None else DEFAULT_CPU_BUDGET_GB * 1e9
    px = max(1, int(budget // bpp))
    if options.batch_size is not None:
        if options.batch_size < 1:
            raise SRError(f"batch size must be >= 1, got {options.batch_size}")
        batch = options.batch_size
    else:
        batch = int(max(1, min(num, px // (h * w))))
    plan = _Plan(batch)
    if options.max_memory_gb is not None and batch * h * w > px:
        _with_tiles(plan, config, int(math.sqrt(px / batch)) - 2 * _halo(_grid_align(config)))
    return plan


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
        return SRResult(image=volume.copy(), info={
            "Model": config.kind, "ModelName": model_name, "WeightsSHA256": sha256,
            "Restored": "nothing: the input is already sampled at the target resolution",
            "RestoredAxes": []})
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

    plans: dict[tuple[int, str], _Plan] = {}
    for i, thick in enumerate(passes):
        for p in pass_planes[i]:
            planar_shape = tuple(slicing.planar_view(volume, slicing.PLANE_AXES[p], thick).shape)
            plan = plan_memory(config, planar_shape, volume.shape, options, device, param_bytes,
                               len(views))
            if tile is not None:
                _with_tiles(plan, config, tile)
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
    codes = [_acquisition_input(config, options, thick) for thick in passes]
    # The schedule the network was trained with (saved in model.json; stand-ins: the default).
    schedule = config.noise_schedule() if hasattr(config, "noise_schedule") else None

    def restore(current: np.ndarray, flips: tuple[int, ...],
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every pass over one view of the volume (``flips`` applied): the image and its summed
        variance, in the view's orientation; gates go straight into ``gates_acc``."""
        unc_sq = np.zeros_like(current) if n > 1 else None
        view_name = "view" + ("".join(map(str, flips)) or "-")

        def compute(planar: torch.Tensor, sl: range, p: str, plan: _Plan, i: int,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
            cond = slicing.condition_stack(planar, sl, m).to(device).contiguous(
                memory_format=torch.channels_last)
            return _sample_batch(
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
    used = [p for p in slicing.PLANE_AXES if any(p in pp for pp in pass_planes)]
    info: dict[str, Any] = {
        "Model": config.kind,
        "ModelName": model_name,
        "WeightsSHA256": sha256,
        "SamplingSteps": steps,
        "Sampler": "direct posterior-mean regression" if direct else "DDIM",
        "Estimate": estimate,
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
        "ContextSlices": m,
        "ResidualScale": scale,
        "ClipResidual": CLIP_RESIDUAL,
        "BatchSize": {p: plan.batch_size for (_, p), plan in plans.items()},
        "TileSize": {p: plan.tile for (_, p), plan in plans.items()},
        "TileHalo": {p: plan.halo if plan.tile else None for (_, p), plan in plans.items()},
        "ExpertEvaluations": stats["evaluated"],
        "SkippedExpertEvaluations": stats["skipped"],
        "GateSkipThreshold": options.gate_skip_threshold,
        "Threads": nthreads if device.type == "cpu" else None,
    }
    if any(code is not None for code in codes):
        info["AcquisitionInput"] = [_describe_acquisition(options, thick) for thick in passes]
    if n > 1:
        info["UncertaintyMeasure"] = "voxel-wise standard deviation over draws (ddof=1)"
    return SRResult(
        image=image,
        gates=gates_acc,
        expert_names=list(getattr(config, "expert_names", ())) if teacher else [],
        uncertainty=unc_out,
        info=info,
    )


def _told_acquisition(options: SROptions, thick: int | None,
                      ) -> tuple[float | None, str | None, float | None]:
    """What a conditioned network is told about one pass (None: unknown): the factor from the
    header; the profile from ``--slice-profile`` or the scan's spectrum (set by
    :func:`run_model`), for a single thick axis only; the width from ``SliceThickness``."""
    if thick is None or options.axis_factors is None:
        return None, None, None
    profile = options.slice_profile if _single_thick_axis(options) is not None else None
    return float(options.axis_factors[thick]), profile, options.slice_thickness_ratio


def _acquisition_input(config: Any, options: SROptions, thick: int | None,
                       ) -> torch.Tensor | None:
    """[1, F] acquisition code of one pass for a conditioned network (None: a blind one)."""
    if not getattr(config, "acquisition_features", 0):
        return None
    factor, profile, ratio = _told_acquisition(options, thick)
    code = ([0.0] * config.acquisition_features if factor is None  # the family's average
            else acquisition_code(factor, profile, ratio))
    return torch.tensor([code], dtype=torch.float32)


def _describe_acquisition(options: SROptions, thick: int | None) -> dict[str, Any]:
    """What a conditioned network was told about one pass, for the sidecar."""
    factor, profile, ratio = _told_acquisition(options, thick)
    return {
        "Axis": thick,
        "Factor": "unknown" if factor is None else round(factor, 4),
        "SliceProfile": profile or "unknown",
        "SliceWidth": f"{ratio:g} x slice spacing" if ratio else "unknown",
    }


def _active(gates: torch.Tensor, k: int, threshold: float) -> tuple[list[int] | None, int]:
    """Experts worth running on this batch/tile (max gate >= threshold) and the skip count."""
    peak = gates.amax(dim=(0, 2, 3))
    keep = [i for i in range(k) if float(peak[i]) >= threshold]
    if not keep:
        keep = [int(peak.argmax())]
    return (None if len(keep) == k else keep), k - len(keep)


def _effective(gates: torch.Tensor, active: list[int] | None) -> torch.Tensor:
    """Gates as actually applied: skipped experts zeroed, the rest renormalised."""
    if active is None:
        return gates
    mask = torch.zeros(gates.shape[1], device=gates.device, dtype=gates.dtype)
    mask[active] = 1
    g = gates * mask.view(1, -1, 1, 1)
    return g / g.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _sample_batch(
    model: torch.nn.Module,
    cond: torch.Tensor,
    sl: range,
    plane: str,
    plan: _Plan,
    scale: float,
    options: SROptions,
    steps: int,
    eta: float,
    n: int,
    k: int,
    device: torch.device,
    stats: dict[str, int],
    tick: Callable[..., None],
    direct: bool = False,
    pass_index: int = 0,
    schedule: Any = None,
    acquisition: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Residual mean (and std over draws) plus fused gates for one batch of slices;
    ``acquisition`` [1, F]: the pass's acquisition code (conditioned networks)."""
    extra = {} if acquisition is None else {"acquisition": acquisition.expand(cond.shape[0], -1)}
    b, _, h, w = cond.shape
    tiles = slicing.plan_tiles(h, w, plan.tile, plan.overlap, plan.halo, plan.align)
    ac = devices.autocast(device)
    full = (slice(None), slice(None))
    regions = (
        [(full, full, full, None)]
        if tiles is None
        else [(t.window, t.core, t.inner, t.weight.to(device)) for t in tiles]
    )
    # Route once per batch/tile: gates depend on the condition only.
    per_region: list[tuple[torch.Tensor | None, list[int] | None, int]] = []
    gate_map = torch.zeros((b, k, h, w), device=device) if k else None
    for (wy, wx), (cy, cx), (iy, ix), wt in regions:
        g = None
        active, skipped = None, 0
        if k:
            with ac:
                g = model.route(cond[:, :, wy, wx]).float()
            active, skipped = _active(g[:, :, iy, ix], k, options.gate_skip_threshold)
            eff = _effective(g[:, :, iy, ix], active)
            gate_map[:, :, cy, cx] += eff if wt is None else eff * wt
        per_region.append((g, active, skipped))
    wsum = None
    if tiles is not None:
        wsum = torch.zeros((h, w), device=device)
        for _, (cy, cx), _, wt in regions:
            wsum[cy, cx] += wt
        if gate_map is not None:
            gate_map /= wsum

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tiles is None:
            g, active, skipped = per_region[0]
            stats["skipped"] += b * skipped
            stats["evaluated"] += b * (k - skipped)
            with ac:
                return model(x_t, cond, t, gates=g, active_experts=active, **extra).float()
        v = torch.zeros_like(x_t)
        for ((wy, wx), (cy, cx), (iy, ix), wt), (g, active, skipped) in zip(
            regions, per_region, strict=True
        ):
            stats["skipped"] += b * skipped
            stats["evaluated"] += b * (k - skipped)
            with ac:
                vt = model(x_t[:, :, wy, wx], cond[:, :, wy, wx], t, gates=g,
                           active_experts=active, **extra)
            v[:, :, cy, cx] += vt[:, :, iy, ix].float() * wt
        return v / wsum

    if direct:  # one deterministic pass of a mean regressor
        t = torch.full((b,), float(MEAN_TIMESTEP), device=device)
        x0 = model_fn(torch.zeros((b, 1, h, w), device=device), t)
        x0 = x0.clamp(-CLIP_RESIDUAL * scale, CLIP_RESIDUAL * scale)
        tick()
        gates = gate_map.cpu().numpy() if gate_map is not None else None
        return x0[:, 0].float().cpu().numpy(), None, gates
    draws = []
    for s in range(n):
        gens = [torch.Generator().manual_seed(_seed_for(options.seed, plane, i, s, pass_index))
                for i in sl]
        x_T = randn((b, 1, h, w), gens, device)
        x0 = ddim_sample(
            model_fn,
            steps=steps,
            eta=eta,
            generator=gens,
            x_T=x_T,
            device=device,
            clip_x0=CLIP_RESIDUAL * scale,
            callback=tick,
            schedule=schedule,
        )
        draws.append(x0[:, 0].float().cpu())
    stack = torch.stack(draws)
    mean = stack.mean(dim=0).numpy()
    std = stack.std(dim=0, unbiased=True).numpy() if n > 1 else None
    gates = gate_map.cpu().numpy() if gate_map is not None else None
    return mean, std, gates
