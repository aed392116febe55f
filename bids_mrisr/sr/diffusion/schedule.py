"""Cosine noise schedule and parameterisation conversions (pure functions, no network).

The forward process is ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps`` with the cosine
``abar`` of Nichol & Dhariwal (2021). Models predict ``v = sqrt(abar) * eps - sqrt(1 - abar) * x0``
(Salimans & Ho, 2022), which stays well conditioned at both ends of the schedule and is what
progressive distillation needs. Timesteps are indices ``t`` in ``[0, T)``; ``t < 0`` means "clean"
(``abar = 1``), which is where the last sampling step lands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

NUM_TRAIN_STEPS = 1000
COSINE_S = 0.008
MAX_BETA = 0.999


@lru_cache(maxsize=8)
def _cosine_table(num_train_steps: int, s: float, max_beta: float) -> torch.Tensor:
    """Discrete ``abar_t`` (float64) via clipped betas, as in improved-diffusion."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [
        min(1.0 - f((i + 1) / num_train_steps) / f(i / num_train_steps), max_beta)
        for i in range(num_train_steps)
    ]
    alphas = 1.0 - torch.tensor(betas, dtype=torch.float64)
    return torch.cumprod(alphas, dim=0)


def cosine_alpha_bars(
    num_train_steps: int = NUM_TRAIN_STEPS, s: float = COSINE_S, max_beta: float = MAX_BETA
) -> torch.Tensor:
    """``abar_t`` for ``t = 0..T-1`` (float64 copy, strictly decreasing, in (0, 1))."""
    return _cosine_table(num_train_steps, s, max_beta).clone()


@dataclass(frozen=True)
class NoiseSchedule:
    """Parameters of the schedule only; the network is always passed in separately."""

    num_train_steps: int = NUM_TRAIN_STEPS
    s: float = COSINE_S
    max_beta: float = MAX_BETA

    def alpha_bar(self, t: torch.Tensor | float | int) -> torch.Tensor:
        return alpha_bar(t, self.num_train_steps, self.s, self.max_beta)


def alpha_bar(
    t: torch.Tensor | float | int,
    num_train_steps: int = NUM_TRAIN_STEPS,
    s: float = COSINE_S,
    max_beta: float = MAX_BETA,
) -> torch.Tensor:
    """``abar`` at timestep index ``t`` (float64, same shape/device as ``t``).

    Integer indices read the discrete table; fractional ones interpolate linearly between
    neighbours (continuous-time students may ask for them); ``t < 0`` gives 1 (clean data).
    """
    t = torch.as_tensor(t)
    device = t.device
    table = _cosine_table(num_train_steps, s, max_beta).to(device)
    tf = t.to(torch.float64)
    if torch.any(tf > num_train_steps - 1):
        raise ValueError(f"timestep beyond the schedule (T = {num_train_steps})")
    clean = tf < 0
    tc = tf.clamp(min=0.0)
    lo = tc.floor().long()
    hi = (lo + 1).clamp(max=num_train_steps - 1)
    frac = tc - lo.to(torch.float64)
    out = table[lo] * (1.0 - frac) + table[hi] * frac
    return torch.where(clean, torch.ones_like(out), out)


def _coefs(abar: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(abar)``, ``sqrt(1-abar)`` broadcast over ``like``'s trailing dims, in its dtype."""
    abar = torch.as_tensor(abar, dtype=torch.float64, device=like.device)
    shape = abar.shape + (1,) * (like.ndim - abar.ndim)
    a = abar.reshape(shape)
    return a.sqrt().to(like.dtype), (1.0 - a).clamp(min=0.0).sqrt().to(like.dtype)


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor | int,
    noise: torch.Tensor,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Noisy sample ``x_t`` from clean ``x0`` and Gaussian ``noise`` at timestep(s) ``t``."""
    ab = (schedule or NoiseSchedule()).alpha_bar(torch.as_tensor(t, device=x0.device))
    sa, sb = _coefs(ab, x0)
    return sa * x0 + sb * noise


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    sa, sb = _coefs(abar, x0)
    return sa * eps - sb * x0


def v_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Training target of a v-prediction model."""
    ab = (schedule or NoiseSchedule()).alpha_bar(torch.as_tensor(t, device=x0.device))
    return v_from_x0_eps(x0, noise, ab)


def predict_x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    sa, sb = _coefs(abar, x_t)
    return sa * x_t - sb * v


def predict_eps_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    sa, sb = _coefs(abar, x_t)
    return sb * x_t + sa * v


def predict_eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Undefined at ``abar = 1`` (no noise left); callers never ask for it there."""
    sa, sb = _coefs(abar, x_t)
    return (x_t - sa * x0) / sb
