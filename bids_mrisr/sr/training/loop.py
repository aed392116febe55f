"""Optimisation loop shared by the teacher, the direct student and distillation rounds.

AdamW, linear warm-up then cosine decay over the step budget (a minutes budget is turned into a
step count from the timing of the first steps), grad-norm clipping at 1, and an EMA of the
weights (the EMA is what gets saved and evaluated).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_mrisr.runtime.atomic import atomic_write
from bids_mrisr.sr.checkpoint import save_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model
from bids_mrisr.sr.pairs import PairSampler, degradation_family
from bids_mrisr.sr.training.losses import diffusion_batch, student_loss, teacher_loss

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None] | None
EMA_DECAY = 0.999
GRAD_CLIP = 1.0
TIMING_STEPS = 20
LOG_EVERY = 50
ESTIMATED_STEPS = 1000
"""The step budget a time-budgeted run plans with until its first steps are timed."""
VAL_SLICES = 64
"""Validation volumes are cut to this many central slices along the thick axis (speed)."""


class EMA:
    """Exponential moving average of a model's weights (warm-up: decay (1+n)/(10+n) early)."""

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(),
                        strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class RunResult:
    """What :func:`run_steps` did: the EMA to save, the step reached, and the compute."""

    ema: EMA
    steps: int
    minutes: float
    """Cumulative optimisation minutes over every sitting of a resumed run."""
    finished: bool
    """False when the sitting ended (``stop_minutes`` or a signal) before the step budget."""
    sittings: list[dict[str, Any]]
    """One entry per sitting: steps from/to, minutes, threads (the campaign's compute record)."""


class SamplerState:
    """Hooks through which the training state carries the data sampler's own state."""

    def __init__(self, get: Callable[[], dict[str, Any]],
                 set: Callable[[dict[str, Any]], None]) -> None:  # noqa: A002
        self.get, self.set = get, set


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads between two steps, so the state it then
    saves is a whole step's (a signal mid-step would otherwise split optimiser and EMA)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *_exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_steps(
    model: nn.Module,
    step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    *,
    minutes: float | None,
    steps: int | None,
    lr: float,
    progress: Progress = None,
    extra_params: Sequence[nn.Parameter] = (),
    label: str = "train",
    state_file: Path | None = None,
    save_every: int = 1000,
    resume: bool = False,
    is_main: bool = True,
    sampler_state: SamplerState | None = None,
    stop_minutes: float | None = None,
    stop_step: int | None = None,
    record: dict[str, Any] | None = None,
) -> RunResult:
    """Optimise ``model`` with ``step_fn(i) -> (loss, stats)``.

    With ``state_file``, everything that decides the next step (model, optimiser, EMA, step,
    schedule, torch RNG and, through ``sampler_state``, the data sampler) is saved every
    ``save_every`` steps, at the end of a sitting and on SIGINT/SIGTERM; ``resume`` continues
    from it, so that a stopped and resumed run equals an uninterrupted one. ``stop_minutes``
    ends this sitting (state saved, ``finished`` False) without touching the schedule: a
    campaign spread over many sittings follows one step budget. ``stop_step`` ends it the same
    way once that step is reached (a snapshot at a chosen step, e.g. a replicate compared at
    the step another run shipped). ``record`` (JSON values: the recipe options) is kept with
    the state; resuming with another record is refused.
    """
    if steps is None and minutes is None:
        raise ValueError("give a step budget (steps=) or a time budget (minutes=)")
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    ema = EMA(model)
    clock = _Clock.begin(steps)
    if resume and state_file is not None and Path(state_file).is_file():
        saved = _load_state(Path(state_file), model, opt, ema, sampler_state)
        check_record(Path(state_file), saved["record"], record)
        clock.resume(saved)
        log.info("%s: resumed from %s at step %d (%.1f min of earlier compute)", label,
                 state_file, clock.step, saved["seconds"] / 60)
    clock.open_sitting()

    def save() -> None:
        if state_file is not None and is_main:
            _save_state(Path(state_file), model, opt, ema, clock.step, clock.elapsed(),
                        total=clock.total, warmup=clock.warmup, sittings=clock.all_sittings(),
                        sampler_state=sampler_state, record=record)

    finished, running = True, {}
    model.train()
    with _StopRequest() as stop:
        while not clock.budget_spent(minutes):
            reason = _sitting_end(stop.signal, clock, stop_minutes, stop_step)
            if reason is not None:
                finished = False
                save()
                log.info("%s: sitting ended at step %d (%s); state saved to %s", label,
                         clock.step, reason, state_file)
                break
            _train_step(model, opt, ema, params, step_fn, clock.step, clock.planned(),
                        clock.warmup, lr, minutes, clock.elapsed(), running, label)
            clock.step += 1
            clock.fit_to_minutes(minutes, label)
            if progress is not None:
                progress(clock.step, _expected_total(clock.step, clock.planned(), minutes,
                                                     clock.elapsed()))
            if clock.step % save_every == 0:
                save()
            if clock.step % LOG_EVERY == 0 or clock.step == clock.total:
                text = " ".join(f"{k}={v:.4g}" for k, v in running.items())
                log.info("%s step %d/%s %s", label, clock.step, clock.total or "?", text)
    if stop.signal is not None:
        raise KeyboardInterrupt(f"signal {stop.signal} at step {clock.step}; state saved")
    return RunResult(ema, clock.step, clock.elapsed() / 60.0, finished, clock.all_sittings())


def _sitting_end(signal: int | None, clock: _Clock, stop_minutes: float | None,
                 stop_step: int | None) -> str | None:
    """Why this sitting ends before the next step (None: it goes on)."""
    if signal is not None:
        return "signal"
    if clock.sitting_over(stop_minutes):
        return f"{stop_minutes:g} min"
    if stop_step is not None and clock.step >= stop_step:
        return f"step {stop_step} reached"
    return None


@dataclass
class _Clock:
    """Where a run stands: its step, step budget and warm-up, the compute spent over every
    sitting (``origin`` is moved back by the earlier sittings' seconds), and this sitting."""

    step: int
    total: int | None
    """None under a time budget until the first steps' timing fixes it."""
    warmup: int
    origin: float
    sittings: list[dict[str, Any]]
    sitting: dict[str, Any]
    sitting_start: float

    @classmethod
    def begin(cls, steps: int | None) -> _Clock:
        total = int(steps) if steps is not None else None
        warmup = max(1, min(100, (total or ESTIMATED_STEPS) // 20))
        return cls(0, total, warmup, time.perf_counter(), [], {}, time.perf_counter())

    def resume(self, saved: dict[str, Any]) -> None:
        """Continue a saved run: its step, budget, warm-up, compute and sittings."""
        self.step, self.sittings = saved["step"], saved["sittings"]
        self.total = saved.get("total") or self.total
        self.warmup = saved.get("warmup") or self.warmup
        self.origin -= saved["seconds"]

    def open_sitting(self) -> None:
        self.sitting = {"from_step": self.step, "threads": torch.get_num_threads(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.sitting_start = time.perf_counter()

    def all_sittings(self) -> list[dict[str, Any]]:
        """The earlier sittings and this one so far."""
        minutes = round((time.perf_counter() - self.sitting_start) / 60, 3)
        return [*self.sittings, dict(self.sitting, to_step=self.step, minutes=minutes)]

    def elapsed(self) -> float:
        """Seconds of optimisation over every sitting."""
        return time.perf_counter() - self.origin

    def planned(self) -> int:
        """The step budget the schedule follows (an estimate until a time budget is fixed)."""
        return self.total or ESTIMATED_STEPS

    def budget_spent(self, minutes: float | None) -> bool:
        if self.total is not None and self.step >= self.total:
            return True
        return minutes is not None and self.elapsed() >= minutes * 60 and self.step > 0

    def sitting_over(self, stop_minutes: float | None) -> bool:
        return (stop_minutes is not None
                and time.perf_counter() - self.sitting_start >= stop_minutes * 60)

    def fit_to_minutes(self, minutes: float | None, label: str) -> None:
        """Under a time budget, turn it into a step budget once the first steps are timed."""
        if self.total is not None or self.step != TIMING_STEPS or minutes is None:
            return
        per_step = self.elapsed() / self.step
        self.total = max(self.step, int(minutes * 60 / per_step))
        self.warmup = min(self.warmup, max(1, self.total // 20))
        log.info("%s: %.3f s/step, budget of %.1f min -> %d steps", label, per_step, minutes,
                 self.total)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, ema: EMA,
                params: Sequence[nn.Parameter], step_fn: Callable, i: int, total: int,
                warmup: int, lr: float, minutes: float | None, elapsed: float,
                running: dict[str, float], label: str) -> None:
    """One optimisation step at the scheduled learning rate."""
    # Under a time cap the schedule follows whichever budget runs out first, so the
    # learning rate has decayed when the clock stops (a machine slower than the first
    # steps' timing otherwise stops mid-schedule).
    sched_step = i
    if minutes is not None and i >= warmup:
        sched_step = max(i, int(total * elapsed / (minutes * 60)))
    for group in opt.param_groups:
        group["lr"] = lr_at(sched_step, total, lr, warmup)
    loss, stats = step_fn(i)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{label}: non-finite loss at step {i}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()
    ema.update(model)
    for k, v in stats.items():
        running[k] = v if k not in running else 0.98 * running[k] + 0.02 * v


def _expected_total(step: int, total: int, minutes: float | None, elapsed: float) -> int:
    """Steps the run will really make: under a time cap, what the clock allows at the current
    pace (else a 200,000-step budget cut at 40 minutes shows an ETA of hours)."""
    if minutes is None or step < TIMING_STEPS or elapsed <= 0:
        return total
    return max(step, min(total, int(step * minutes * 60 / elapsed)))


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA, step: int,
                seconds: float, *, total: int | None = None, warmup: int | None = None,
                sittings: list[dict[str, Any]] | None = None,
                sampler_state: SamplerState | None = None,
                record: dict[str, Any] | None = None) -> None:
    """Everything needed to continue: written to a temporary file, then renamed (atomic)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "ema": ema.model.state_dict(), "ema_updates": ema.updates, "step": step,
             "seconds": seconds, "total": total, "warmup": warmup,
             "sittings": list(sittings or []), "torch_rng": torch.get_rng_state(),
             "sampler": sampler_state.get() if sampler_state is not None else None,
             "record": record}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _saved_state(path: Path) -> dict[str, Any]:
    """A saved training state ({} where there is none)."""
    if not Path(path).is_file():
        return {}
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_step(path: Path) -> int:
    """The step a saved training state reached (0 where there is none)."""
    return int(_saved_state(path).get("step", 0))


def read_state_record(path: Path) -> dict[str, Any] | None:
    """The ``record`` a saved training state keeps (None: no state, or one saved before
    states kept one)."""
    return _saved_state(path).get("record")


def check_record(path: Path, saved: dict[str, Any] | None,
                 given: dict[str, Any] | None) -> None:
    """Refuse to resume a state saved with another record (ValueError naming each
    difference). A state without one (saved before states kept it) resumes with ``given``,
    which its next save then keeps."""
    if saved is None or given is None or saved == given:
        return
    changed = [f"{key} {saved.get(key)!r} saved, {given.get(key)!r} given"
               for key in sorted(saved.keys() | given.keys()) if saved.get(key) != given.get(key)]
    raise ValueError(f"{path}: the run was started with other recipe options ("
                     f"{'; '.join(changed)}); resume it with the recipe file it started with")


def _load_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA,
                sampler_state: SamplerState | None = None) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the saved state is of another network than the one being "
                         "trained (same --preset/--base-width/--acquisition-input needed to "
                         f"resume): {str(exc).splitlines()[0]}") from None
    opt.load_state_dict(state["optimizer"])
    ema.model.load_state_dict(state["ema"])
    ema.updates = int(state["ema_updates"])
    if state.get("torch_rng") is not None:
        torch.set_rng_state(state["torch_rng"])
    if sampler_state is not None and state.get("sampler") is not None:
        sampler_state.set(state["sampler"])
    return {"step": int(state["step"]), "seconds": float(state["seconds"]),
            "total": state.get("total"), "warmup": state.get("warmup"),
            "sittings": list(state.get("sittings") or []), "record": state.get("record")}


def validate(
    model: nn.Module, config: ModelConfig, val_volumes: Sequence[np.ndarray] | None,
    steps: int, planes: tuple[str, ...] = ("coronal", "sagittal"),
    max_slices: int | None = VAL_SLICES,
) -> dict[str, Any] | None:
    """Mean held-out metrics over ``val_volumes`` (3x thick axial slices, 1% noise), through the
    planes that contain the thick axis, as the app runs them."""
    if not val_volumes:
        return None
    from bids_mrisr.sr.training.evaluate import evaluate_volume

    per = []
    for vol in val_volumes:
        vol = np.asarray(vol, dtype=np.float32)
        if max_slices and vol.shape[2] > max_slices:
            lo = (vol.shape[2] - max_slices) // 2
            vol = vol[:, :, lo : lo + max_slices]
        per.append(evaluate_volume(model, config, vol, steps=steps, planes=planes))
    keys = ("psnr_cubic", "psnr_model", "gain_db", "ssim_cubic", "ssim_model")
    out: dict[str, Any] = {k: float(np.mean([p[k] for p in per])) for k in keys if k in per[0]}
    out.update(sampling_steps=steps, planes=list(planes), factor=3.0, per_volume=per)
    return out


def _names(provenance: dict | None) -> list:
    prov = provenance or {}
    return list(prov.get("training_volumes", []))


@dataclass(frozen=True)
class DiffusionRecipe:
    """How a diffusion model (teacher, or the no-teacher student baseline) trains: one object,
    saved whole in the checkpoint provenance."""

    steps: int | None = None
    minutes: float | None = None
    """A time cap; the learning-rate schedule follows whichever budget runs out first."""
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0
    crop: int = 96


def _train_direct(
    kind: str,
    volumes: Sequence[np.ndarray],
    config: ModelConfig,
    out_dir: str | Path,
    recipe: DiffusionRecipe,
    *,
    progress: Progress,
    val_volumes: Sequence[np.ndarray] | None,
    provenance: dict | None,
    sampling_steps: int,
) -> str:
    if config.kind != kind:
        raise ValueError(f"expected a {kind} config, got kind={config.kind!r}")
    torch.manual_seed(recipe.seed)
    model = build_model(config)
    sampler = PairSampler(list(volumes), config.context_slices, config.residual_scale,
                          crop=recipe.crop, seed=recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    schedule = config.noise_schedule()

    def step_fn(_i: int) -> tuple[torch.Tensor, dict[str, float]]:
        cond, x0 = sampler.sample(recipe.batch_size)
        x_t, t, v = diffusion_batch(x0, generator=gen, schedule=schedule)
        if kind == "teacher":
            return teacher_loss(model, x_t, cond, t, v)
        return student_loss(model, x_t, cond, t, v)

    run = run_steps(model, step_fn, minutes=recipe.minutes, steps=recipe.steps, lr=recipe.lr,
                    progress=progress, label=kind)
    ema, done, used = run.ema, run.steps, run.minutes
    metrics = validate(ema.model, config, val_volumes, sampling_steps)
    prov = dict(provenance or {})
    prov.update(
        trained=True,
        kind=kind,
        objective="v-prediction" + (" + MoE gating" if kind == "teacher" else ""),
        steps=done,
        minutes=round(used, 3),
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=recipe.seed,
        crop=recipe.crop,
        ema_decay=EMA_DECAY,
        training_volumes=_names(provenance),
        sampling_steps=sampling_steps,
        degradation=degradation_family(sampler.factor_range),
        training=asdict(recipe),
    )
    if metrics is not None:
        prov["metrics"] = metrics
    return save_checkpoint(ema.model, Path(out_dir), prov)


def train_teacher(volumes: Sequence[np.ndarray], config: ModelConfig, out_dir: str | Path,
                  recipe: DiffusionRecipe, *, progress: Progress = None,
                  val_volumes: Sequence[np.ndarray] | None = None,
                  provenance: dict | None = None) -> str:
    """Train the MoEDiff-SR teacher; save its EMA weights to ``out_dir``; return the sha256."""
    return _train_direct("teacher", volumes, config, out_dir, recipe, progress=progress,
                         val_volumes=val_volumes, provenance=provenance, sampling_steps=20)
