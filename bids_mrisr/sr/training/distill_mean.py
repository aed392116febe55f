"""Distil a MoE posterior-mean teacher into a posterior-mean student (one pass per slice).

The teacher of ``--recipe moe`` is itself a mean regressor, so there are no sampling steps to
halve: the student learns the ground-truth residual (L1), the teacher's frozen prediction
(lambda * L1: a smoother target that carries what the experts learned from more capacity), and,
as the seed paper's feature-map guidance, a learned 1x1 projection of its decoder features onto
the teacher's gate-mixed decoder features at the same stride (mu * MSE,
:class:`~bids_mrisr.sr.training.distill.FeatureProjector`). lambda = mu = 0 trains the same
network on the same crops without a teacher: the comparison that says what the teacher adds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr import device as devices
from bids_mrisr.sr.checkpoint import load_checkpoint, save_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model
from bids_mrisr.sr.objectives import MEAN_LOSS, mean_call_inputs
from bids_mrisr.sr.options import PROFILES
from bids_mrisr.sr.pairs import PairSampler, degradation_family
from bids_mrisr.sr.training.distill import FeatureProjector
from bids_mrisr.sr.training.loop import EMA_DECAY, RunResult, run_steps, validate
from bids_mrisr.sr.training.regression import REFRESH_EVERY, start_record

log = logging.getLogger(__name__)

STEP_CEILING = 10_000_000
"""Step budget passed with a time budget: the clock then ends the run and sets the learning
rate schedule. A step count estimated from the first steps' timing would be far too small on
a GPU, where the first steps also pay for worker start-up and kernel selection."""

Batch = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class MeanDistillRecipe:
    """How the student is distilled: one object, saved whole in the checkpoint provenance."""

    steps: int | None = None
    minutes: float | None = None
    teacher_weight: float = 1.0
    """lambda: weight of the L1 to the teacher's mean prediction (0: no teacher target)."""
    feature_weight: float = 0.1
    """mu: weight of the feature guidance (0: none)."""
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    crop: int = 64
    factor_range: tuple[float, float] = (1.5, 5.0)
    profiles: tuple[str, ...] = PROFILES
    device: str = "cpu"
    workers: int = 0
    """DataLoader processes degrading volumes beside the training step (GPU machines)."""
    init_from: str | None = None
    """A student checkpoint of the same architecture to start from (None: random weights).
    On a CPU budget distillation fine-tunes the shipped student rather than training anew."""

    @property
    def uses_teacher(self) -> bool:
        return bool(self.teacher_weight or self.feature_weight)


def load_mean_teacher(directory: str | Path) -> tuple[nn.Module, str]:
    """A frozen, eval-mode MoE mean teacher (on the CPU) and its sha256; refuses anything else."""
    loaded = load_checkpoint(Path(directory))
    if loaded.config.kind != "teacher" or loaded.config.prediction_type != "mean":
        raise ValueError(f"{directory}: a {loaded.config.kind} predicting "
                         f"{loaded.config.prediction_type!r}; distillation needs a MoE mean "
                         "teacher (bids_mrisr train --recipe moe)")
    teacher = loaded.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, loaded.sha256


def _mean_forward(model: nn.Module, cond: Tensor, code: Tensor, features: bool,
                  ) -> tuple[Tensor, list[Tensor]]:
    """A mean regressor's prediction and (if ``features``) its decoder features."""
    x_t, t = mean_call_inputs(cond)
    acquisition = code if model.config.acquisition_features else None
    if features:
        return model(x_t, cond, t, return_features=True, acquisition=acquisition)
    return model(x_t, cond, t, acquisition=acquisition), []


def mean_distill_loss(student: nn.Module, cond: Tensor, x0: Tensor, code: Tensor, *,
                      teacher: nn.Module | None = None,
                      projector: FeatureProjector | None = None,
                      teacher_weight: float = 0.0, feature_weight: float = 0.0,
                      ) -> tuple[Tensor, dict[str, float]]:
    """L1(student, x0) + lambda * L1(student, teacher) + mu * feature guidance."""
    guided = bool(feature_weight) and projector is not None and teacher is not None
    pred, s_feats = _mean_forward(student, cond, code, guided)
    pred = pred.float()
    truth = F.l1_loss(pred, x0)
    loss = truth
    stats = {"l1": float(truth.detach())}
    if teacher is not None:  # its distance is logged even where it is not a target
        with torch.no_grad():
            t_pred, t_feats = _mean_forward(teacher, cond, code, guided)
        to_teacher = F.l1_loss(pred, t_pred.float())
        stats["l1_teacher"] = float(to_teacher.detach())
        if teacher_weight:
            loss = loss + teacher_weight * to_teacher
        if guided:
            feat = projector.loss(s_feats, t_feats).float()
            loss = loss + feature_weight * feat
            stats["feature"] = float(feat.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats


class _Crops(torch.utils.data.IterableDataset):
    """Endless batches from a :class:`PairSampler`, one sampler per DataLoader worker."""

    def __init__(self, volumes: Sequence[np.ndarray], config: ModelConfig,
                 recipe: MeanDistillRecipe) -> None:
        self.volumes, self.config, self.recipe = list(volumes), config, recipe

    def sampler(self, worker: int = 0) -> PairSampler:
        r = self.recipe
        return PairSampler(self.volumes, self.config.context_slices, self.config.residual_scale,
                           crop=r.crop, seed=r.seed + 7919 * worker,
                           refresh_every=REFRESH_EVERY, factor_range=r.factor_range,
                           profiles=r.profiles, code_width=self.config.code_width)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        sampler = self.sampler(info.id + 1 if info is not None else 0)
        while True:
            yield sampler.sample_with_acquisition(self.recipe.batch_size)


def crop_batches(volumes: Sequence[np.ndarray], config: ModelConfig, recipe: MeanDistillRecipe,
                 pin: bool = False) -> Iterator[Batch]:
    """Batches of (cond, x0, acquisition code), in-process or from ``recipe.workers``."""
    data = _Crops(volumes, config, recipe)
    if recipe.workers > 0:
        return iter(torch.utils.data.DataLoader(data, batch_size=None,
                                                num_workers=recipe.workers,
                                                persistent_workers=True, pin_memory=pin))
    sampler = data.sampler()
    return (sampler.sample_with_acquisition(recipe.batch_size) for _ in iter(int, 1))


def distill_mean_student(
    teacher_dir: str | Path | None,
    volumes: Sequence[np.ndarray],
    config: ModelConfig,
    out_dir: str | Path,
    recipe: MeanDistillRecipe,
    *,
    progress: Callable[[int, int], None] | None = None,
    val_volumes: Sequence[np.ndarray] | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Train the mean student ``config`` (with the teacher in ``teacher_dir`` unless lambda =
    mu = 0); save its EMA to ``out_dir``; return the sha256."""
    if config.kind != "student" or config.prediction_type != "mean":
        raise ValueError("distill_mean_student trains a mean-prediction student config")
    if recipe.uses_teacher and teacher_dir is None:
        raise ValueError("lambda or mu > 0 needs a teacher checkpoint")
    dev = devices.resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    student = build_model(config)
    start = _start_from(student, recipe.init_from) if recipe.init_from else None
    teacher, projector, teacher_sha = (_teacher_for(teacher_dir, student, recipe, dev)
                                       if recipe.uses_teacher else (None, None, None))
    student = student.to(dev)
    batches = crop_batches(volumes, config, recipe, pin=dev.type == "cuda")
    first = [next(batches)]  # worker start-up before the clock, not in the first steps' timing
    autocast = devices.autocast(dev)

    def step_fn(_i: int) -> tuple[Tensor, dict[str, float]]:
        cond, x0, code = (t.to(dev, non_blocking=True)
                          for t in (first.pop() if first else next(batches)))
        with autocast:
            return mean_distill_loss(student, cond, x0, code, teacher=teacher,
                                     projector=projector, teacher_weight=recipe.teacher_weight,
                                     feature_weight=recipe.feature_weight)

    steps = recipe.steps if recipe.steps is not None or recipe.minutes is None else STEP_CEILING
    label = "student (distilled)" if recipe.uses_teacher else "student (no teacher)"
    started = time.perf_counter()
    run = run_steps(student, step_fn, minutes=recipe.minutes, steps=steps, lr=recipe.lr,
                    progress=progress, label=label,
                    extra_params=list(projector.parameters()) if projector else ())
    ema_model = run.ema.model.eval()
    metrics = validate(ema_model, config, val_volumes, steps=1)
    prov = dict(provenance or {})
    prov.update(_provenance(recipe, run, teacher_sha, dev, started))
    if start is not None:
        prov["init_weights"] = start
    if teacher is not None:
        prov["teacher_config"] = teacher.config.to_dict()
    if metrics is not None:
        prov["metrics"] = metrics
        log.info("%s held-out: cubic %.2f dB, model %.2f dB (%+.2f dB)", label,
                 metrics["psnr_cubic"], metrics["psnr_model"], metrics["gain_db"])
    return save_checkpoint(ema_model.to("cpu"), Path(out_dir), prov)


def _start_from(student: nn.Module, directory: str) -> dict[str, Any]:
    """Copy a verified student checkpoint of ``student``'s architecture into it; its sha256
    and steps go into the provenance."""
    loaded = load_checkpoint(Path(directory))
    if loaded.config != student.config:
        raise ValueError(f"{directory}: another architecture than the student being "
                         "distilled; a distillation starts only from the same network")
    student.load_state_dict(loaded.model.state_dict())
    log.info("starting the student from %s (sha256 %s)", directory, loaded.sha256[:12])
    return start_record(loaded)


def _teacher_for(teacher_dir: str | Path | None, student: nn.Module,
                 recipe: MeanDistillRecipe, dev: torch.device,
                 ) -> tuple[nn.Module, FeatureProjector | None, str]:
    """The frozen mean teacher on ``dev``, the feature projector when features guide, and
    the teacher's sha256; the two must read the same condition slices at the same scale."""
    teacher, teacher_sha = load_mean_teacher(teacher_dir)
    t_cfg, config = teacher.config, student.config
    if (t_cfg.context_slices, t_cfg.residual_scale) != (config.context_slices,
                                                         config.residual_scale):
        raise ValueError("teacher and student must share context_slices and residual_scale")
    if recipe.feature_weight and t_cfg.expert_shapes:
        raise ValueError(f"{teacher_dir}: its experts differ in architecture, so their features "
                         "cannot guide a student: distil from its output (feature_weight 0)")
    projector = (FeatureProjector(student, teacher, identity=recipe.init_from is not None)
                 .to(dev) if recipe.feature_weight else None)
    return teacher.to(dev), projector, teacher_sha


def _provenance(recipe: MeanDistillRecipe, run: RunResult, teacher_sha: str | None,
                dev: torch.device, started: float) -> dict[str, Any]:
    """What the checkpoint records of this training: objective, teacher, compute, recipe."""
    return dict(
        trained=True,
        kind="student",
        objective=f"posterior-mean regression ({MEAN_LOSS})" + (
            f" + {recipe.teacher_weight:g} x L1 to the MoE mean teacher + "
            f"{recipe.feature_weight:g} x feature guidance" if recipe.uses_teacher else
            ", no teacher"),
        distilled_from=teacher_sha,
        teacher_weight=recipe.teacher_weight,
        feature_weight=recipe.feature_weight,
        steps=run.steps,
        minutes=round(run.minutes, 3),
        wall_minutes=round((time.perf_counter() - started) / 60, 3),
        finished=run.finished,
        device=str(dev),
        precision=devices.precision_name(dev),
        ema_decay=EMA_DECAY,
        sampling_steps=1,
        degradation=degradation_family(recipe.factor_range, (1.0, 1.0), 0.0, recipe.profiles),
        training={k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(recipe).items()},
        batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed, crop=recipe.crop,
    )
