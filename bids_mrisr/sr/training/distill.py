"""Progressive distillation (Salimans & Ho, 2022) of the MoE teacher into the small student.

Round r trains a student to take in ONE DDIM step what its teacher does in TWO, halving the
step count each round; round 0's teacher is the MoE with ``teacher_steps`` steps, later rounds'
teacher is the previous round's (frozen) student. Feature guidance adds an MSE between a learned
1x1 projection of the student's decoder features and the teacher's decoder features at the same
downsampling factor.

Step grids are nested: the final grid is the inference engine's own
(``respaced_timesteps(T, final)`` then clean), and each coarser-to-finer round splits every
interval at its midpoint. The last interval of the engine's grid, 0 -> clean, cannot be split
in integer time; its halves are 0 -> 0 (identity) and 0 -> clean, and the student never trains
on zero-length intervals.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from bids_mrisr.sr.diffusion.sampler import CLIP_RESIDUAL, ddim_step, respaced_timesteps
from bids_mrisr.sr.diffusion.schedule import NoiseSchedule, q_sample
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model
from bids_mrisr.sr.pairs import PairSampler
from bids_mrisr.sr.training.loop import EMA_DECAY, run_steps, validate

log = logging.getLogger(__name__)

ModelFn = Callable[[Tensor, Tensor], Tensor]


# --- grids and targets -------------------------------------------------------------------------
def final_grid(steps: int, num_train_steps: int = 1000) -> list[int]:
    """The engine's DDIM grid for ``steps`` steps, ending at -1 (clean): steps + 1 points."""
    return respaced_timesteps(num_train_steps, steps) + [-1]


def refine_grid(grid: Sequence[int]) -> list[int]:
    """Split every interval at its (integer) midpoint: n intervals -> 2n."""
    out: list[int] = []
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        mid = (a + max(b, 0)) // 2 if a - max(b, 0) > 1 else max(b, 0)
        out += [a, mid]
    return out + [grid[-1]]


def grid_for(steps: int, final_steps: int, num_train_steps: int = 1000) -> list[int]:
    """Nested grid with ``steps`` intervals (``steps = final_steps * 2^j``)."""
    grid = final_grid(final_steps, num_train_steps)
    while len(grid) - 1 < steps:
        grid = refine_grid(grid)
    if len(grid) - 1 != steps:
        raise ValueError(f"{steps} steps is not {final_steps} * 2^j")
    return grid


def v_for_jump(x_t: Tensor, x_target: Tensor, t: Tensor, t_next: Tensor,
               schedule: NoiseSchedule | None = None) -> Tensor:
    """The v that takes ``x_t`` to ``x_target`` in one deterministic DDIM step t -> t_next.

    Salimans & Ho, Alg. 2: x~ = (x'' - (s''/s) x_t) / (a'' - (s''/s) a), eps~ = (x_t - a x~)/s,
    v~ = a eps~ - s x~ (a = sqrt(abar), s = sqrt(1 - abar)); t_next < 0 gives x~ = x''.
    """
    sched = schedule or NoiseSchedule()
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    ab = sched.alpha_bar(torch.as_tensor(t, device=x_t.device)).reshape(shape)
    abn = sched.alpha_bar(torch.as_tensor(t_next, device=x_t.device)).reshape(shape)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    an, sn = abn.sqrt(), (1 - abn).clamp(min=0).sqrt()
    ratio = sn / s
    x0 = (x_target.double() - ratio * x_t.double()) / (an - ratio * a)
    eps = (x_t.double() - a * x0) / s
    return (a * eps - s * x0).to(x_t.dtype)


def two_steps(model_fn: ModelFn, x_t: Tensor, t: Tensor, t_mid: Tensor, t_end: Tensor,
              clip_x0: float | None = None, schedule: NoiseSchedule | None = None) -> Tensor:
    """Two deterministic DDIM steps t -> t_mid -> t_end (zero-length steps are identities)."""
    x = x_t
    for a, b in ((t, t_mid), (t_mid, t_end)):
        same = (a == b).view(-1, *([1] * (x.ndim - 1)))
        if bool(same.all()):
            continue
        v = model_fn(x, a.float())
        x_new, _ = ddim_step(x, a, b, v, clip_x0=clip_x0, schedule=schedule)
        x = torch.where(same, x, x_new)
    return x


# --- feature guidance --------------------------------------------------------------------------
def _strides(model: nn.Module, size: int) -> list[int]:
    with torch.no_grad():
        cfg = model.config
        cond = torch.zeros(1, cfg.in_condition_channels, size, size)
        _, feats = model(torch.zeros(1, 1, size, size), cond, torch.zeros(1),
                         return_features=True)
    return [size // f.shape[-1] for f in feats], [f.shape[1] for f in feats]


class FeatureProjector(nn.Module):
    """1x1 convs from student decoder levels to teacher decoder levels of the same stride.

    ``identity``: where a level has as many student as teacher channels, start its conv as
    the identity. A student that starts as one of the teacher's own (upcycled) experts then
    starts with a small guidance loss; a random projection would make the loss, and so the
    first gradients into the trained student's features, large."""

    def __init__(self, student: nn.Module, teacher: nn.Module, size: int = 64,
                 identity: bool = False) -> None:
        super().__init__()
        s_strides, s_ch = _strides(student, size)
        t_strides, t_ch = _strides(teacher, size)
        self.pairs: list[tuple[int, int]] = []
        projs = []
        for i, st in enumerate(s_strides):
            if st in t_strides:
                j = t_strides.index(st)
                self.pairs.append((i, j))
                proj = nn.Conv2d(s_ch[i], t_ch[j], 1)
                if identity and s_ch[i] == t_ch[j]:
                    with torch.no_grad():
                        proj.weight.copy_(torch.eye(s_ch[i])[:, :, None, None])
                        proj.bias.zero_()
                projs.append(proj)
        self.projs = nn.ModuleList(projs)

    def loss(self, s_feats: list[Tensor], t_feats: list[Tensor]) -> Tensor:
        if not self.pairs:
            return s_feats[-1].new_zeros(())
        total = 0.0
        for proj, (i, j) in zip(self.projs, self.pairs, strict=True):
            total = total + F.mse_loss(proj(s_feats[i]), t_feats[j].detach())
        return total / len(self.pairs)


# --- the distillation driver -------------------------------------------------------------------
def _frozen(model: nn.Module) -> nn.Module:
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass(frozen=True)
class DistillRecipe:
    """How progressive distillation runs: one object, saved whole in the provenance."""

    teacher_steps: int = 8
    rounds: int | None = None
    """Halvings; default: from ``teacher_steps`` down to ``final_steps``."""
    final_steps: int = 2
    steps_per_round: int | None = None
    steps: int | None = None
    """Total optimisation steps, split evenly over the rounds (if no ``steps_per_round``)."""
    minutes: float | None = None
    """Total time budget, split evenly over the rounds (if no step budget)."""
    feature_weight: float = 0.1
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    crop: int = 96

    def schedule(self) -> tuple[int, int, int | None, float | None]:
        """(rounds, final steps, steps per round, minutes per round), checked."""
        teacher_steps, final_steps, rounds = self.teacher_steps, self.final_steps, self.rounds
        if rounds is None:
            ratio = teacher_steps / final_steps
            rounds = int(round(math.log2(ratio))) if ratio >= 1 else -1
            if rounds < 1 or final_steps * 2**rounds != teacher_steps:
                raise ValueError(f"teacher_steps={teacher_steps} is not final_steps="
                                 f"{final_steps} times a power of two (>= 2x)")
        else:
            if rounds < 1 or teacher_steps % 2**rounds:
                raise ValueError(f"teacher_steps={teacher_steps} cannot be halved {rounds} "
                                 "times")
            final_steps = teacher_steps // 2**rounds
        per_round = self.steps_per_round
        if per_round is None and self.steps is not None:
            per_round = max(1, self.steps // rounds)
        if per_round is None and self.minutes is None:
            raise ValueError("give steps_per_round, steps or minutes")
        return rounds, final_steps, per_round, None if self.minutes is None else \
            self.minutes / rounds


def distill_student(
    teacher_dir: str | Path,
    volumes: Sequence[np.ndarray],
    student_config: ModelConfig,
    out_dir: str | Path,
    recipe: DistillRecipe,
    *,
    progress: Callable[[int, int], None] | None = None,
    val_volumes: Sequence[np.ndarray] | None = None,
    provenance: dict | None = None,
) -> str:
    """Distil the checkpoint in ``teacher_dir`` into a ``student_config`` student; return sha256.

    ``recipe.rounds`` defaults to halving from ``teacher_steps`` down to ``final_steps``; if
    given, the student ends with ``teacher_steps / 2^rounds`` steps.
    """
    if student_config.kind != "student":
        raise ValueError("distill_student needs a student config")
    rounds, final_steps, steps_per_round, round_minutes = recipe.schedule()
    teacher_steps, feature_weight = recipe.teacher_steps, recipe.feature_weight
    batch_size, lr, seed, crop = recipe.batch_size, recipe.lr, recipe.seed, recipe.crop

    loaded = _matching_teacher(Path(teacher_dir), student_config)
    teacher, t_cfg = _frozen(loaded.model), loaded.config
    sched = t_cfg.noise_schedule()  # the teacher's own, from its model.json
    clip = CLIP_RESIDUAL * student_config.residual_scale
    sampler = PairSampler(list(volumes), student_config.context_slices,
                          student_config.residual_scale, crop=crop, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = build_model(student_config)

    history: list[dict[str, Any]] = []
    done_total, used_total = 0, 0.0
    n_teacher = teacher_steps
    budget_total = None if steps_per_round is None else steps_per_round * rounds
    for r in range(rounds):
        n_student = n_teacher // 2
        t_grid = torch.tensor(grid_for(n_teacher, final_steps), dtype=torch.float64)
        s_grid = t_grid[::2]
        valid = torch.nonzero(s_grid[:-1] != s_grid[1:]).flatten()  # skip 0 -> 0
        projector = FeatureProjector(student, teacher)
        step_fn = _round_step(_Round(teacher, student, projector, t_grid, valid), sampler,
                              gen, sched, clip, batch_size, feature_weight)
        run = run_steps(
            student, step_fn, minutes=round_minutes, steps=steps_per_round, lr=lr,
            progress=_round_progress(progress, done_total, budget_total, rounds),
            extra_params=list(projector.parameters()),
            label=f"distill round {r + 1}/{rounds} ({n_teacher}->{n_student} steps)",
        )
        ema, done, used = run.ema, run.steps, run.minutes
        done_total += done
        used_total += used
        history.append({"round": r, "teacher_steps": n_teacher, "student_steps": n_student,
                        "steps": done, "minutes": round(used, 3)})
        # Next round starts from this round's EMA student and uses it, frozen, as teacher.
        student.load_state_dict(ema.model.state_dict())
        teacher = _frozen(copy.deepcopy(ema.model))
        n_teacher = n_student

    student.eval()
    metrics = validate(student, student_config, val_volumes, final_steps)
    prov = dict(provenance or {})
    prov.update(
        trained=True,
        kind="student",
        objective="progressive distillation (v-space) + feature guidance",
        distilled_from=loaded.sha256,
        teacher_config=t_cfg.to_dict(),
        **_schedule_record(recipe, history, done_total, used_total),
        training_volumes=list((provenance or {}).get("training_volumes", [])),
    )
    if metrics is not None:
        prov["metrics"] = metrics
    return save_checkpoint(student, Path(out_dir), prov)


def _matching_teacher(teacher_dir: Path, student_config: ModelConfig) -> LoadedCheckpoint:
    """The teacher checkpoint, which must read the student's condition slices at its scale."""
    loaded = load_checkpoint(teacher_dir)
    if (loaded.config.context_slices, loaded.config.residual_scale) != (
            student_config.context_slices, student_config.residual_scale):
        raise ValueError("teacher and student must share context_slices and residual_scale")
    return loaded


def _round_progress(progress: Callable[[int, int], None] | None, base: int,
                    budget_total: int | None, rounds: int) -> Callable[[int, int], None]:
    """One round's progress as steps of the whole distillation (``base``: earlier rounds')."""

    def report(i: int, total: int) -> None:
        if progress is not None:
            tot = budget_total or total * rounds
            progress(min(base + i, tot), tot)

    return report


def _schedule_record(recipe: DistillRecipe, history: list[dict[str, Any]], steps: int,
                     minutes: float) -> dict[str, Any]:
    """The rounds, compute and recipe as the checkpoint records them (the common recipe keys
    at the top level too)."""
    rounds, final_steps, _, _ = recipe.schedule()
    return {"teacher_steps": recipe.teacher_steps, "rounds": rounds, "round_history": history,
            "sampling_steps": final_steps, "feature_weight": recipe.feature_weight,
            "steps": steps, "minutes": round(minutes, 3), "batch_size": recipe.batch_size,
            "lr": recipe.lr, "seed": recipe.seed, "crop": recipe.crop, "ema_decay": EMA_DECAY,
            "training": asdict(recipe)}


@dataclass(frozen=True)
class _Round:
    """One halving round: the frozen teacher, the student it trains, the feature projector,
    the teacher's time grid and the start indices whose two-step jump moves."""

    teacher: nn.Module
    student: nn.Module
    projector: FeatureProjector
    t_grid: Tensor
    valid: Tensor


def _round_step(rnd: _Round, sampler: PairSampler, gen: torch.Generator,
                sched: NoiseSchedule, clip: float, batch_size: int, feature_weight: float,
                ) -> Callable[[int], tuple[Tensor, dict[str, float]]]:
    """The loss of one step: the student's single jump against two of the teacher's, with the
    teacher's features guiding the student's through the projector."""

    def step_fn(_i: int) -> tuple[Tensor, dict[str, float]]:
        cond, x0 = sampler.sample(batch_size)
        pick = rnd.valid[torch.randint(len(rnd.valid), (x0.shape[0],), generator=gen)]
        t, t_mid, t_end = (rnd.t_grid[2 * pick + k] for k in range(3))
        noise = torch.randn(x0.shape, generator=gen)
        x_t = q_sample(x0, t, noise, sched)
        with torch.no_grad():
            feats: list[list[Tensor]] = []

            def model_fn(x: Tensor, tt: Tensor) -> Tensor:
                if not feats:
                    v, f = rnd.teacher(x, cond, tt, return_features=True)
                    feats.append(f)
                    return v
                return rnd.teacher(x, cond, tt)

            x_end = two_steps(model_fn, x_t, t, t_mid, t_end, clip_x0=clip, schedule=sched)
            target = v_for_jump(x_t, x_end, t, t_end, sched)
        pred, s_feats = rnd.student(x_t, cond, t.float(), return_features=True)
        mse = F.mse_loss(pred, target)
        feat = rnd.projector.loss(s_feats, feats[0]) if feats and feature_weight else \
            mse.new_zeros(())
        loss = mse + feature_weight * feat
        return loss, {"loss": float(loss.detach()), "mse": float(mse.detach()),
                      "feature": float(feat.detach())}

    return step_fn
