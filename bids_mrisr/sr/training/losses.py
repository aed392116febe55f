"""Training objectives: v-prediction batches, the MoE teacher loss, the student loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.diffusion.schedule import NoiseSchedule, q_sample, v_target
from bids_mrisr.sr.networks.config import MEAN_TIMESTEP
from bids_mrisr.sr.networks.gating import upsample_gates

MAD_TO_SIGMA = 1.4826


def diffusion_batch(
    x0: Tensor, schedule: NoiseSchedule | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, v_target)`` with ``t`` uniform over ``0..T-1`` (float tensor [B])."""
    sched = schedule or NoiseSchedule()
    b = x0.shape[0]
    t = torch.randint(0, sched.num_train_steps, (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, noise, sched)
    return x_t, t.float(), v_target(x0, noise, t, sched)


def robust_temperature(err: Tensor) -> Tensor:
    """MAD-based scale of how much the experts' per-token errors differ (detached, > 0).

    Errors are first centred per token (mean over experts): the gate target should depend on
    which expert is better on a token, not on how hard the token is.
    """
    d = (err - err.mean(dim=1, keepdim=True)).flatten()
    mad = (d - d.median()).abs().median() * MAD_TO_SIGMA
    floor = 1e-3 * err.mean() + 1e-12
    return torch.maximum(mad, floor).detach()


def teacher_loss(
    teacher: nn.Module,
    x_t: Tensor,
    cond: Tensor,
    t: Tensor,
    v_target: Tensor,
    balance_weight: float = 0.01,
    gate_weight: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """MoEDiff-SR objective (ARCHITECTURE §3).

    * per-expert: ``mean_x sum_k G_k(x) |v_k(x) - v(x)|^2`` with detached gates, so each
      expert specialises where it is routed without the router dodging this term;
    * ensemble: ``mean |sum_k G_k v_k - v|^2`` (trains experts and router jointly);
    * gating supervision: per-token expert errors (squared error average-pooled at the
      finest patch size onto the token grid), soft target ``softmax(-e_k / tau)`` with tau the
      MAD-based robust scale, KL(target || route_tokens) averaged over tokens;
    * load balancing: ``K * sum_k mean_usage_k^2`` (1 when uniform, K when collapsed).
    """
    K = teacher.config.num_experts
    s = teacher.token_stride
    H, W = x_t.shape[-2:]
    logits = teacher.route_tokens(cond, return_logits=True)  # [B, K, Ht, Wt]
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    gates = upsample_gates(probs, s, (H, W))  # [B, K, H, W]
    preds = teacher.expert_outputs(x_t, cond, t)  # [B, K, H, W]
    err = (preds - v_target) ** 2
    expert = (gates.detach() * err).sum(dim=1).mean()
    ensemble = ((gates * preds).sum(dim=1, keepdim=True) - v_target).pow(2).mean()

    tok_err = F.avg_pool2d(err.detach(), s, ceil_mode=True)[..., : logits.shape[-2],
                                                              : logits.shape[-1]]
    tau = robust_temperature(tok_err)
    target = torch.softmax(-tok_err / tau, dim=1)
    gate_kl = (target * (torch.log(target.clamp_min(1e-12)) - log_probs)).sum(dim=1).mean()
    usage = probs.mean(dim=(0, 2, 3))
    balance = K * (usage**2).sum()

    loss = expert + ensemble + gate_weight * gate_kl + balance_weight * balance
    stats = {
        "loss": float(loss.detach()),
        "expert": float(expert.detach()),
        "ensemble": float(ensemble.detach()),
        "gate_kl": float(gate_kl.detach()),
        "balance": float(balance.detach()),
        "tau": float(tau),
    }
    for k in range(K):
        stats[f"usage_{k}"] = float(usage[k].detach())
    return loss, stats


def student_loss(
    student: nn.Module, x_t: Tensor, cond: Tensor, t: Tensor, target: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Plain MSE between the student's v prediction and ``target``."""
    loss = F.mse_loss(student(x_t, cond, t), target)
    return loss, {"loss": float(loss.detach())}


# --- posterior-mean regression (the shipped student, per-scan adaptation) ---------------
MEAN_LOSS = "L1"
"""L1 on the scaled residual: converges to higher PSNR than L2 for SR networks (EDSR's
finding), and does not chase the rare large errors at skull and background edges."""


def predict_mean(model: nn.Module, cond: torch.Tensor,
                 acquisition: torch.Tensor | None = None) -> torch.Tensor:
    """The regressor's call: zeros in the noisy-input channel, the constant timestep, and the
    acquisition code where the network takes one (``acquisition`` is ignored otherwise)."""
    b, _, h, w = cond.shape
    t = torch.full((b,), float(MEAN_TIMESTEP), device=cond.device)
    x_t = torch.zeros((b, 1, h, w), device=cond.device, dtype=cond.dtype)
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None),
                                                       "config", None)
    if acquisition is not None and getattr(config, "acquisition_features", 0):
        return model(x_t, cond, t, acquisition=acquisition)
    return model(x_t, cond, t)


def mean_regression_loss(model: nn.Module, cond: torch.Tensor, x0: torch.Tensor,
                         acquisition: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    return regression_loss(predict_mean(model, cond, acquisition), x0)


def regression_loss(pred: torch.Tensor, x0: torch.Tensor,
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 loss, and the MSE relative to predicting no residual (cubic) for the logs."""
    loss = F.l1_loss(pred, x0)
    with torch.no_grad():
        mse = float(F.mse_loss(pred, x0))
        base = float((x0**2).mean())  # the error of predicting no residual (= cubic)
    return loss, {"l1": float(loss.detach()), "mse_over_cubic": mse / max(base, 1e-12)}
