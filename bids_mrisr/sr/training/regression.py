"""The plain-regression path: a network trained to predict the posterior-mean residual.

PSNR rewards the posterior mean, and a diffusion draw has about twice its squared error, so the
shipped student is first of all a mean regressor (``prediction_type="mean"``): one deterministic
pass per slice. The same path trains the baseline U-Net of the quality benchmark, and it is what
the learnability test exercises. A diffusion teacher adds capacity and draws on top of it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bids_mrisr.sr.checkpoint import save_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model
from bids_mrisr.sr.objectives import MEAN_LOSS, predict_mean, regression_loss
from bids_mrisr.sr.options import PROFILES
from bids_mrisr.sr.pairs import PairSampler, degradation_family
from bids_mrisr.sr.training.loop import (
    EMA_DECAY,
    RunResult,
    SamplerState,
    read_state_step,
    run_steps,
    validate,
)
from bids_mrisr.sr.training.losses import gate_benefit, moe_mean_loss

if TYPE_CHECKING:
    from bids_mrisr.sr.training.distributed import Rank

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
"""Resumable training state inside the checkpoint directory (removed once the weights exist)."""
REFRESH_EVERY = 1500
"""Crops drawn between two whole-volume re-degradations (each ~1-3 s on a CPU): at ~0.04 s per
batch of 16 this keeps refreshing under a fifth of the time, and over an hour's training still
renews the pool hundreds of times."""

LOSS = "L1"
"""L1 on the scaled residual: converges to higher PSNR than L2 for SR networks (EDSR's finding,
and ours: it does not chase the rare large errors at the skull and background edges)."""


class _Crops(torch.utils.data.IterableDataset):
    """Endless batches from a :class:`PairSampler`; each DataLoader worker owns its sampler
    (seeded by worker), so workers degrade volumes in parallel with the training step."""

    def __init__(self, volumes: Sequence[np.ndarray], config: ModelConfig, crop: int, seed: int,
                 batch_size: int, factor_range: tuple[float, float],
                 zoom_range: tuple[float, float] = (1.0, 1.0),
                 multi_axis_rate: float = 0.0, profiles: tuple[str, ...] = PROFILES) -> None:
        self.args = (list(volumes), config.context_slices, config.residual_scale)
        self.code_width = config.code_width
        self.crop, self.seed, self.batch_size = crop, seed, batch_size
        self.factor_range, self.zoom_range = factor_range, zoom_range
        self.multi_axis_rate, self.profiles = multi_axis_rate, profiles

    def sampler(self, worker: int = 0) -> PairSampler:
        return PairSampler(*self.args, crop=self.crop, seed=self.seed + 7919 * worker,
                           refresh_every=REFRESH_EVERY, factor_range=self.factor_range,
                           zoom_range=self.zoom_range, multi_axis_rate=self.multi_axis_rate,
                           profiles=self.profiles, code_width=self.code_width)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        sampler = self.sampler(info.id + 1 if info is not None else 0)
        while True:
            yield sampler.sample_with_acquisition(self.batch_size)


class _MoEMeanObjective(nn.Module):
    """The MoE teacher's regression objective behind one ``forward``, so that DDP (which
    synchronises gradients of what ``forward`` computes) can wrap it like the student."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, cond: torch.Tensor, x0: torch.Tensor, code: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return moe_mean_loss(self.teacher, cond, x0, code)


GATE_CHECK_BATCHES = 16
"""Held-out batches on which learned gates are compared with uniform ones (``gate_benefit``)."""


def _gate_check(model: nn.Module, volumes: Sequence[np.ndarray], config: ModelConfig,
                recipe: RegressionRecipe) -> dict[str, Any]:
    """:func:`gate_benefit` on fixed crops of ``volumes`` (held out where there are any)."""
    sampler = PairSampler(list(volumes), config.context_slices, config.residual_scale,
                          crop=recipe.crop, seed=recipe.seed + 1, factor_range=recipe.factor_range,
                          profiles=recipe.profiles, code_width=config.code_width)
    batches = [sampler.sample_with_acquisition(recipe.batch_size)
               for _ in range(GATE_CHECK_BATCHES)]
    return gate_benefit(model.eval(), batches)


@dataclass(frozen=True)
class RegressionRecipe:
    """How the regression path trains: one object, saved whole in the checkpoint provenance."""

    steps: int | None = None
    minutes: float | None = None
    """A time cap; the learning-rate schedule follows whichever budget runs out first."""
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    crop: int = 64
    factor_range: tuple[float, float] = (1.5, 5.0)
    zoom_range: tuple[float, float] = (1.0, 1.0)
    """Scale augmentation of the ground truth (:class:`PairSampler`); (1, 1) is off."""
    multi_axis_rate: float = 0.0
    """Share of draws coarse along more axes than the restored one (:class:`PairSampler`)."""
    profiles: tuple[str, ...] = PROFILES
    """Slice-profile shapes drawn (:class:`PairSampler`)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto`` (bf16 autocast on GPUs)."""
    workers: int = 0
    """DataLoader worker processes degrading volumes beside the training step."""
    threads: int | None = None
    save_every: int = 1000
    """Steps between resumable states (``train_state.pt``)."""
    train_experts: bool = True
    """A MoE teacher: False trains its router (and the router's encoder) only, the experts
    frozen as ``init_from`` started them: routing then learns which trained expert suits which
    token without the experts drifting from their training (as upcycled experts fine-tuned on
    a CPU budget did)."""
    stop_minutes: float | None = None
    """End this sitting after so many minutes (state and a snapshot of the weights saved; the
    schedule keeps following ``steps``): one sitting of a campaign resumed with ``resume``."""
    stop_step: int | None = None
    """End this sitting once the run reaches this step, the same way (``stop_minutes``)."""


def train_mean_regressor(
    volumes: Sequence[np.ndarray],
    config: ModelConfig,
    out_dir: str | Path,
    recipe: RegressionRecipe,
    *,
    progress: Callable[[int, int], None] | None = None,
    val_volumes: Sequence[np.ndarray] | None = None,
    provenance: dict[str, Any] | None = None,
    resume: bool = False,
    init_from: str | Path | Sequence[str | Path] | None = None,
    record: dict[str, Any] | None = None,
) -> str | None:
    """Train ``config`` (``prediction_type`` must be ``mean``); save its EMA; return the sha256.

    Under ``torchrun`` every process trains on its own crops with DDP-averaged gradients and
    only rank 0 writes (other ranks return None). ``resume`` continues from
    ``out_dir/train_state.pt``. ``init_from``: a checkpoint of the same config to fine-tune
    (its sha256 and steps go into the provenance), e.g. the shipped student on a site's scans;
    for a MoE teacher, one or more students whose copies start the experts (see
    :func:`_upcycle`).
    ``record`` (the recipe options) is kept with the resumable state; resuming with another
    record is refused (ValueError).
    """
    from bids_mrisr.sr.training import distributed

    if config.prediction_type != "mean":
        raise ValueError("the regression path trains prediction_type='mean' models")
    moe = config.kind == "teacher"
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    rank = distributed.from_environment()
    dev = distributed.training_device(recipe.device, rank)
    out_dir = Path(out_dir)
    with distributed.process_group(rank, dev):
        torch.manual_seed(recipe.seed)  # the same initial weights on every rank
        model = build_model(config)
        start = _warm_start(model, config, init_from) if init_from is not None else None
        if moe and not recipe.train_experts:
            model.experts.requires_grad_(False)
        model = model.to(dev)
        net: nn.Module = _MoEMeanObjective(model) if moe else model
        if rank.world_size > 1:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[dev.index] if dev.type == "cuda" else None)
        state_file = out_dir / STATE_FILE
        loader, sampler_state = _loader(volumes, config, recipe, rank, dev,
                                        read_state_step(state_file) if resume else 0)
        started = time.perf_counter()
        run = run_steps(
            model, _regression_step(net, loader, dev, moe), minutes=recipe.minutes,
            steps=recipe.steps, lr=recipe.lr,
            progress=progress if rank.is_main else None,
            label=f"{config.kind} (mean regression)", state_file=state_file,
            resume=resume, is_main=rank.is_main, save_every=recipe.save_every,
            sampler_state=sampler_state, stop_minutes=recipe.stop_minutes,
            stop_step=recipe.stop_step, record=record)
        if not rank.is_main:
            return None
        ema_model = run.ema.model.to("cpu")
        metrics = validate(ema_model, config, val_volumes, steps=1)
        prov = dict(provenance or {})
        if moe:  # accepted only if the learned routing beats averaging the same experts
            prov["gates"] = _checked_gates(ema_model, val_volumes or volumes, config, recipe)
        prov.update(_mean_provenance(config, recipe, run, rank.world_size, dev, started))
        return _save_trained(ema_model, out_dir, prov, start, metrics, run)


def _regression_step(net: nn.Module, loader: Iterator, dev: torch.device, moe: bool,
                     ) -> Callable[[int], tuple[torch.Tensor, dict[str, float]]]:
    """One optimisation step's loss: the next batch of crops through ``net`` (a MoE teacher's
    objective computes its own loss, with load balancing), in the device's mixed precision."""
    from bids_mrisr.sr import device as devices

    autocast = devices.autocast(dev)

    def step_fn(_i: int) -> tuple[torch.Tensor, dict[str, float]]:
        cond, x0, code = next(loader)
        cond = cond.to(dev, non_blocking=True)
        x0 = x0.to(dev, non_blocking=True)
        code = code.to(dev, non_blocking=True)
        with autocast:
            if moe:
                return net(cond, x0, code)
            pred = predict_mean(net, cond, code)
        return regression_loss(pred.float(), x0)

    return step_fn


def _checked_gates(model: nn.Module, volumes: Sequence[np.ndarray], config: ModelConfig,
                   recipe: RegressionRecipe) -> dict[str, Any]:
    """A MoE teacher's learned routing against uniform gates over the same experts, logged."""
    gates = _gate_check(model, volumes, config, recipe)
    log.info("gates: L1 %.5f learned against %.5f uniform (%s); entropy %.3f of %.3f",
             gates["l1_learned_gates"], gates["l1_uniform_gates"],
             "better" if gates["beats_uniform"] else "NOT better: the experts are "
             "no better than their average", gates["gate_entropy"], gates["uniform_entropy"])
    return gates


def _mean_provenance(config: ModelConfig, recipe: RegressionRecipe, run: RunResult,
                     processes: int, dev: torch.device, started: float) -> dict[str, Any]:
    """What the checkpoint records of this training: objective, compute, recipe, degradation."""
    from bids_mrisr.sr import device as devices

    moe = config.kind == "teacher"
    return dict(
        trained=True,
        kind=config.kind,
        objective=f"posterior-mean regression of the residual ({MEAN_LOSS})"
                  + (f", MoE top-{config.router_top_k} routing" if moe else ""),
        steps=run.steps,
        minutes=round(run.minutes, 3),
        wall_minutes=round((time.perf_counter() - started) / 60, 3),
        finished=run.finished,
        compute={"optimisation_minutes": round(run.minutes, 3), "steps": run.steps,
                 "crops": run.steps * recipe.batch_size * processes,
                 "sittings": run.sittings},
        processes=processes,
        device=str(dev),
        precision=devices.precision_name(dev),
        ema_decay=EMA_DECAY,
        sampling_steps=1,
        degradation=degradation_family(recipe.factor_range, recipe.zoom_range,
                                       recipe.multi_axis_rate, recipe.profiles),
        training={k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(recipe).items()},
        # kept at the top level too: readers of earlier checkpoints look for them here
        batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed, crop=recipe.crop,
    )


def _save_trained(ema_model: nn.Module, out_dir: Path, prov: dict[str, Any],
                  start: dict[str, Any] | None, metrics: dict[str, Any] | None,
                  run: RunResult) -> str:
    """Save the EMA weights with ``prov`` (and the starting weights and held-out metrics); a
    finished run drops its resumable state."""
    if start is not None:
        prov["init_weights"] = start
    if metrics is not None:
        prov["metrics"] = metrics
        log.info("held-out: cubic %.2f dB, model %.2f dB (%+.2f dB)", metrics["psnr_cubic"],
                 metrics["psnr_model"], metrics["gain_db"])
    sha = save_checkpoint(ema_model, out_dir, prov)
    if run.finished:  # a sitting that stopped early keeps its state for --resume
        (out_dir / STATE_FILE).unlink(missing_ok=True)
    else:
        log.info("snapshot of the weights at step %d saved; continue with --resume", run.steps)
    return sha


def _loader(volumes: Sequence[np.ndarray], config: ModelConfig, recipe: RegressionRecipe,
            rank: Rank, dev: torch.device, resumed_step: int,
            ) -> tuple[Iterator[tuple[torch.Tensor, ...]], SamplerState | None]:
    """Batches of (cond, x0, acquisition code) and, in-process, the sampler's state hooks.

    In one process (``workers == 0``, one rank: the CPU campaign) the sampler's state travels
    with the training state, so a resumed run draws exactly the crops an uninterrupted one
    would. DataLoader workers and other ranks cannot hand theirs back: a resumed run reseeds
    them from the step it resumes at (the same distribution of crops, not the same crops).
    """
    exact = recipe.workers == 0 and rank.world_size == 1
    data = _Crops(volumes, config, recipe.crop,
                  recipe.seed + 104729 * rank.rank + 15485863 * resumed_step * (not exact),
                  recipe.batch_size, recipe.factor_range, recipe.zoom_range,
                  recipe.multi_axis_rate, recipe.profiles)
    if recipe.workers > 0:
        return iter(torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=recipe.workers, persistent_workers=True,
            pin_memory=dev.type == "cuda")), None
    sampler = data.sampler()
    batches = (sampler.sample_with_acquisition(recipe.batch_size) for _ in iter(int, 1))
    return batches, SamplerState(sampler.state_dict, sampler.load_state_dict) if exact else None


def _warm_start(model: nn.Module, config: ModelConfig,
                init_from: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Copy a verified checkpoint's weights into ``model``; refuse another architecture.

    Several checkpoints (students) start a MoE teacher's experts in turn.

    Two changes keep the start computing exactly what the checkpoint did, so fine-tuning
    starts from its quality: a blind checkpoint may start a conditioned network (the
    acquisition input starts at zero), and a network may be deepened (more residual blocks per
    level; each new block's last convolution starts at zero, so the block starts as the
    identity).
    """
    from bids_mrisr.sr.checkpoint import CheckpointError, load_checkpoint

    directories = ([Path(init_from)] if isinstance(init_from, (str, Path))
                   else [Path(d) for d in init_from])
    if not directories:
        raise CheckpointError("no checkpoint to start from")
    loaded_all = [load_checkpoint(d) for d in directories]
    loaded, directory = loaded_all[0], directories[0]
    if config.kind == "teacher" and all(c.config.kind == "student" for c in loaded_all):
        return _upcycle(model, config, loaded_all, directories)
    if len(directories) > 1:
        raise CheckpointError(f"{len(directories)} checkpoints: only students, upcycled into "
                              "the experts of a MoE teacher, start from more than one")
    adds_conditioning = loaded.config.acquisition_features < config.acquisition_features
    added_blocks = config.num_res_blocks - loaded.config.num_res_blocks
    grown = dataclasses.replace(
        loaded.config, num_res_blocks=config.num_res_blocks,
        acquisition_features=config.acquisition_features if adds_conditioning
        else loaded.config.acquisition_features)
    if grown != config or added_blocks < 0:
        raise CheckpointError(f"checkpoint {directory}: its network config differs from the "
                              "one being trained; fine-tuning needs the same architecture "
                              "(or the same one deepened)")
    missing, unexpected = model.load_state_dict(
        _widened_code_inputs(loaded.model.state_dict(), model.state_dict()), strict=False)
    new_blocks = _blocks_beyond(model, loaded.config.num_res_blocks)
    if unexpected or any(".acquisition." not in key
                         and not key.startswith(tuple(f"{n}." for n in new_blocks))
                         for key in missing):
        raise CheckpointError(f"checkpoint {directory}: its weights do not fit the network")
    with torch.no_grad():
        for name in new_blocks:
            conv = model.get_submodule(name).conv2
            conv.weight.zero_()
            conv.bias.zero_()
    log.info("fine-tuning from %s (sha256 %s)%s%s", directory, loaded.sha256[:12],
             f"; the acquisition code grows to {config.acquisition_features} entries"
             if adds_conditioning else "",
             f"; {added_blocks} more residual block(s) per level, starting as the identity"
             if added_blocks else "")
    return {**start_record(loaded),
            **({"added_res_blocks": added_blocks} if added_blocks else {})}


def _widened_code_inputs(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                         ) -> dict[str, torch.Tensor]:
    """``state`` with each acquisition input that takes fewer code entries than ``target``'s
    padded with zero columns: the new entries start unheard (the same function)."""
    out = dict(state)
    for key, value in state.items():
        wanted = target.get(key)
        if (".acquisition." in f".{key}" and key.endswith("weight") and wanted is not None
                and value.ndim == 2 and value.shape[1] < wanted.shape[1]):
            out[key] = torch.cat([value, value.new_zeros(value.shape[0],
                                                         wanted.shape[1] - value.shape[1])], 1)
    return out


def start_record(loaded: Any) -> dict[str, Any]:
    """What ``provenance.init_weights`` says of a checkpoint a training started from."""
    return {"sha256": loaded.sha256, "steps": loaded.provenance.get("steps"),
            "minutes": loaded.provenance.get("minutes")}


def _blocks_beyond(model: nn.Module, count: int) -> list[str]:
    """Names of the U-Net's residual blocks past the first ``count`` of each level (the
    encoder's ``enc.L.i`` and the decoder's ``dec.L.i``, i >= count)."""
    names = []
    for name, _ in model.named_modules():
        parts = name.split(".")
        if len(parts) >= 3 and parts[-3] in ("enc", "dec") and parts[-1].isdigit() \
                and int(parts[-1]) >= count:
            names.append(name)
    return names


def _upcycle(model: nn.Module, config: ModelConfig, students: Sequence[Any],
             directories: Sequence[Path]) -> dict[str, Any]:
    """Start every expert of a MoE mean teacher as a copy of a trained student (the router
    stays random). An expert with extra input channels (the edge expert's Laplacian) gets the
    student's input weights for the channels they share and zeros for the rest, so every
    expert computes exactly its student. One student: every expert and so any mixture starts
    at it. Several students (e.g. seeds or snapshots of one campaign, or networks of other
    widths and depths): expert k starts as student k mod n, with its architecture, so the
    experts start different and uniform gates start as the ensemble of the students. A blind
    student may start a conditioned teacher: the experts' acquisition input starts at zero, as
    in :func:`_warm_start`."""
    from bids_mrisr.sr.checkpoint import CheckpointError

    loaded = students[0]
    try:
        expected = ModelConfig.upcycled_teacher(loaded.config, config.num_experts,
                                                config.router_top_k,
                                                [c.config for c in students[1:]])
    except ValueError as exc:
        raise CheckpointError(f"checkpoints {', '.join(map(str, directories))}: {exc}"
                              ) from None
    if not loaded.config.acquisition_features:
        config = dataclasses.replace(config, acquisition_features=0)
    if config != expected or loaded.config.prediction_type != "mean":
        raise CheckpointError(f"checkpoint {directories[0]}: a student upcycles only into "
                              "ModelConfig.upcycled_teacher(its config) (bids_mrisr train "
                              "--recipe moe --init-weights STUDENT)")
    with torch.no_grad():
        for k, expert in enumerate(model.experts):
            source = students[k % len(students)].model.unet.state_dict()
            target = expert.unet.state_dict()
            for key, value in source.items():
                if target[key].shape == value.shape:
                    target[key].copy_(value)
                else:  # in_conv: [out, in * stem^2, 3, 3], extra channels appended
                    target[key].zero_()
                    target[key][:, : value.shape[1]].copy_(value)
    log.info("upcycling %s into %d experts",
             ", ".join(f"{d} (sha256 {c.sha256[:12]})" for d, c in zip(directories, students,
                                                                       strict=True)),
             config.num_experts)
    record = [start_record(c) for c in students]
    if len(record) == 1:
        return {**record[0], "upcycled_experts": config.num_experts}
    return {"students": record, "upcycled_experts": config.num_experts,
            "expert_students": [k % len(record) for k in range(config.num_experts)]}
