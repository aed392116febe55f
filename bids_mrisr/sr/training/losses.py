"""Training objectives: v-prediction batches, the MoE teacher losses, the diffusion student's
loss (the mean regressor's loss is shared with adaptation in ``sr/objectives.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.diffusion.schedule import NoiseSchedule, q_sample, v_target
from bids_mrisr.sr.networks.gating import upsample_gates
from bids_mrisr.sr.objectives import mean_call_inputs

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
      expert specialises where it is routed without the router dodging this term (G: the
      gates inference applies, top-k where the config routes sparsely);
    * ensemble: ``mean |sum_k G_k v_k - v|^2`` (trains experts and router jointly);
    * gating supervision: per-token expert errors (squared error average-pooled at the
      finest patch size onto the token grid), soft target ``softmax(-e_k / tau)`` with tau the
      MAD-based robust scale, KL(target || route_tokens) averaged over tokens;
    * load balancing: ``K * sum_k mean_usage_k^2`` (1 when uniform, K when collapsed).
    """
    H, W = x_t.shape[-2:]
    logits = teacher.route_tokens(cond, return_logits=True)  # [B, K, Ht, Wt]
    preds = teacher.expert_outputs(x_t, cond, t)  # [B, K, H, W]
    err = (preds - v_target) ** 2
    gates, routing = _routing_terms(teacher, logits, err, (H, W))
    expert = (gates.detach() * err).sum(dim=1).mean()
    ensemble = ((gates * preds).sum(dim=1, keepdim=True) - v_target).pow(2).mean()
    loss = (expert + ensemble + gate_weight * routing["gate_kl"]
            + balance_weight * routing["balance"])
    return loss, _teacher_stats(loss, expert, ensemble, routing)


def _routing_terms(teacher: nn.Module, logits: Tensor, err: Tensor, size: tuple[int, int],
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pixel gates as inference applies them (top-k where the router keeps k), the gate
    supervision KL(softmax(-token error / tau) || routing) and the load-balancing term."""
    K = teacher.config.num_experts
    s = teacher.token_stride
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    gates = upsample_gates(teacher.router.probabilities(logits), s, size)  # [B, K, H, W]
    tok_err = F.avg_pool2d(err.detach(), s, ceil_mode=True)[..., : logits.shape[-2],
                                                              : logits.shape[-1]]
    tau = robust_temperature(tok_err)
    target = torch.softmax(-tok_err / tau, dim=1)
    gate_kl = (target * (torch.log(target.clamp_min(1e-12)) - log_probs)).sum(dim=1).mean()
    usage = probs.mean(dim=(0, 2, 3))
    return gates, {"gate_kl": gate_kl, "balance": K * (usage**2).sum(), "tau": tau,
                   "usage": usage}


def _teacher_stats(loss: Tensor, expert: Tensor, ensemble: Tensor,
                   routing: dict[str, Tensor]) -> dict[str, float]:
    stats = {"loss": float(loss.detach()), "expert": float(expert.detach()),
             "ensemble": float(ensemble.detach()), "gate_kl": float(routing["gate_kl"].detach()),
             "balance": float(routing["balance"].detach()), "tau": float(routing["tau"])}
    for k, used in enumerate(routing["usage"]):
        stats[f"usage_{k}"] = float(used.detach())
    return stats


def moe_mean_loss(teacher: nn.Module, cond: Tensor, x0: Tensor,
                  acquisition: Tensor | None = None, balance_weight: float = 0.01,
                  gate_weight: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """The MoE teacher as a posterior-mean regressor (``--recipe moe``): the objective of
    :func:`teacher_loss` with the mean residual as target and L1 for squared errors (as the
    student's :data:`MEAN_LOSS` in ``sr/objectives.py``). Each expert learns only where it is
    routed (detached gates), the router is pulled toward the expert that is best on each token,
    and the routed mixture is what is scored."""
    logits = teacher.route_tokens(cond, return_logits=True)
    preds = expert_means(teacher, cond, acquisition).float()
    err = (preds - x0).abs()
    gates, routing = _routing_terms(teacher, logits.float(), err, tuple(cond.shape[-2:]))
    expert = (gates.detach() * err).sum(dim=1).mean()
    ensemble = F.l1_loss((gates * preds).sum(dim=1, keepdim=True), x0)
    loss = (expert + ensemble + gate_weight * routing["gate_kl"]
            + balance_weight * routing["balance"])
    return loss, _teacher_stats(loss, expert, ensemble, routing)


@torch.no_grad()
def gate_benefit(teacher: nn.Module, batches: list[tuple[Tensor, Tensor, Tensor]],
                 ) -> dict[str, object]:
    """Do the learned gates earn their keep? L1 of the routed mixture against the same
    experts averaged with uniform gates, and against each expert alone, on held-out crops;
    plus the gates' mean entropy (log K when uniform) and each expert's mean gate."""
    K = teacher.config.num_experts
    sums = {"learned": 0.0, "uniform": 0.0, "entropy": 0.0}
    alone = torch.zeros(K)
    usage = torch.zeros(K)
    for cond, x0, code in batches:
        gates = teacher.route(cond)
        preds = expert_means(teacher, cond, code)
        sums["learned"] += float(F.l1_loss((gates * preds).sum(dim=1, keepdim=True), x0))
        sums["uniform"] += float(F.l1_loss(preds.mean(dim=1, keepdim=True), x0))
        sums["entropy"] += float(-(gates * gates.clamp_min(1e-12).log()).sum(dim=1).mean())
        alone += (preds - x0).abs().mean(dim=(0, 2, 3))
        usage += gates.mean(dim=(0, 2, 3))
    n = max(len(batches), 1)
    learned, uniform = sums["learned"] / n, sums["uniform"] / n
    return {"l1_learned_gates": round(learned, 6), "l1_uniform_gates": round(uniform, 6),
            "beats_uniform": learned < uniform,
            "l1_each_expert_alone": [round(float(v) / n, 6) for v in alone],
            "gate_entropy": round(sums["entropy"] / n, 4),
            "uniform_entropy": round(float(torch.log(torch.tensor(float(K)))), 4),
            "mean_gate": [round(float(v) / n, 4) for v in usage], "crops": sum(
                int(c.shape[0]) for c, _, _ in batches)}


def student_loss(
    student: nn.Module, x_t: Tensor, cond: Tensor, t: Tensor, target: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Plain MSE between the student's v prediction and ``target``."""
    loss = F.mse_loss(student(x_t, cond, t), target)
    return loss, {"loss": float(loss.detach())}


def expert_means(teacher: nn.Module, cond: Tensor, acquisition: Tensor | None = None,
                 ) -> Tensor:
    """Each expert's mean estimate [B, K, H, W] of a MoE mean teacher (told ``acquisition``
    where its experts take the code)."""
    x_t, t = mean_call_inputs(cond)
    code = acquisition if teacher.config.acquisition_features else None
    return teacher.expert_outputs(x_t, cond, t, acquisition=code)
