"""DDIM sampling (Song et al., 2021) on a respaced schedule for v-prediction models.

The sampler owns no network: callers pass ``model_fn(x_t, t) -> v`` (``t`` a float tensor of
timestep indices, one per batch element), so the same code serves the teacher, the student and
distillation targets. Randomness comes only from the ``generator`` argument (or one generator per
batch element, which makes each sample independent of how samples are batched).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bids_mrisr.sr.diffusion.schedule import (
    NoiseSchedule,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_v,
)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLIP_RESIDUAL = 1.0
"""Each DDIM step clips the predicted clean residual to +-1 intensity unit (times
residual_scale): on a ~[0, 1] image no real correction is larger, and clipping keeps few-step or
stochastic sampling from running away (as improved-diffusion's clip_denoised)."""

Generators = torch.Generator | Sequence[torch.Generator] | None


def respaced_timesteps(num_train_steps: int, steps: int) -> list[int]:
    """``steps`` timesteps with trailing spacing: ``T-1, T-1-T/steps, ...`` (descending).

    The last step starts from a noisy level (e.g. [999, 499] for 2 steps, not [999, 0] where
    almost no noise is left and the step does nothing), and halving ``steps`` keeps every other
    timestep, so progressive distillation rounds nest.
    """
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be in [1, {num_train_steps}], got {steps}")
    stride = num_train_steps / steps
    return [int(round(num_train_steps - 1 - k * stride)) for k in range(steps)]


def randn(
    shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Gaussian noise drawn on the CPU (same numbers on every device), then moved.

    With a sequence of generators, element ``i`` of the batch comes from ``generator[i]``.
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        out = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        if len(generator) != shape[0]:
            raise ValueError("need one generator per batch element")
        out = torch.cat(
            [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator]
        )
    return out.to(device)


def ddim_sigma(abar_t: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t of the DDIM paper (eq. 16); eta = 1 is DDPM-like, eta = 0 deterministic."""
    return eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()


def ddim_step(
    x_t: torch.Tensor,
    t: torch.Tensor | int | float,
    t_prev: torch.Tensor | int | float,
    v: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
    schedule: NoiseSchedule | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update ``x_t -> x_{t_prev}`` from a v prediction; returns ``(x_prev, x0_hat)``.

    ``t_prev < 0`` lands on clean data. ``noise`` is required when ``eta > 0``.
    """
    sched = schedule or NoiseSchedule()
    dev = x_t.device
    ab_t = sched.alpha_bar(torch.as_tensor(t, device=dev))
    ab_prev = sched.alpha_bar(torch.as_tensor(t_prev, device=dev))
    x0 = predict_x0_from_v(x_t, v, ab_t)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = predict_eps_from_x0(x_t, x0, ab_t)
    else:
        eps = predict_eps_from_v(x_t, v, ab_t)
    sigma = ddim_sigma(ab_t, ab_prev, eta) if eta > 0 else torch.zeros_like(ab_prev)
    shape = sigma.shape + (1,) * (x_t.ndim - sigma.ndim)
    sig = sigma.reshape(shape)
    abp = ab_prev.reshape(shape)
    dir_coef = (1 - abp - sig**2).clamp(min=0).sqrt()
    x_prev = abp.sqrt().to(x_t.dtype) * x0 + dir_coef.to(x_t.dtype) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sig.to(x_t.dtype) * noise
    return x_prev, x0


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    shape: Sequence[int] | None = None,
    *,
    steps: int = 20,
    eta: float = 0.0,
    generator: Generators = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    clip_x0: float | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Draw samples by DDIM over ``steps`` respaced timesteps; returns x0 (float32).

    ``callback(step_index, steps, x0_hat)`` runs after every step (progress bars, tests).
    """
    sched = schedule or NoiseSchedule()
    if x_T is None:
        if shape is None:
            raise ValueError("give shape or x_T")
        x_T = randn(shape, generator, device)
    x = x_T.to(device=device, dtype=torch.float32)
    ts = respaced_timesteps(sched.num_train_steps, steps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        v = model_fn(x, tt).to(torch.float32)
        noise = randn(x.shape, generator, x.device) if eta > 0 and t_prev >= 0 else None
        x, x0 = ddim_step(
            x,
            t,
            t_prev,
            v,
            eta=eta if t_prev >= 0 else 0.0,
            noise=noise,
            clip_x0=clip_x0,
            schedule=sched,
        )
        if callback is not None:
            callback(i, len(ts), x0)
    return x


__all__ = ["CLIP_RESIDUAL", "ddim_sample", "ddim_sigma", "ddim_step", "randn",
           "respaced_timesteps"]
