"""The posterior-mean regression objective: the shipped student's loss, shared by training
(``sr/training/``) and per-scan adaptation at inference (``sr/adapt.py``), so that both optimise
the same numbers and the inference path imports no training code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.networks.config import MEAN_TIMESTEP

MEAN_LOSS = "L1"
"""L1 on the scaled residual: converges to higher PSNR than L2 for SR networks (EDSR's
finding), and does not chase the rare large errors at skull and background edges."""


def predict_mean(model: nn.Module, cond: Tensor, acquisition: Tensor | None = None) -> Tensor:
    """The regressor's call: zeros in the noisy-input channel, the constant timestep, and the
    acquisition code where the network takes one (``acquisition`` is ignored otherwise)."""
    x_t, t = mean_call_inputs(cond)
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None),
                                                       "config", None)
    if acquisition is not None and getattr(config, "acquisition_features", 0):
        return model(x_t, cond, t, acquisition=acquisition)
    return model(x_t, cond, t)


def mean_call_inputs(cond: Tensor) -> tuple[Tensor, Tensor]:
    """What a mean regressor takes besides its condition: zeros in the noisy-input channel
    and the constant timestep."""
    b, _, h, w = cond.shape
    t = torch.full((b,), float(MEAN_TIMESTEP), device=cond.device)
    return torch.zeros((b, 1, h, w), device=cond.device, dtype=cond.dtype), t


def mean_regression_loss(model: nn.Module, cond: Tensor, x0: Tensor,
                         acquisition: Tensor | None = None,
                         ) -> tuple[Tensor, dict[str, float]]:
    """:func:`regression_loss` of the model's mean prediction for ``cond``."""
    return regression_loss(predict_mean(model, cond, acquisition), x0)


def regression_loss(pred: Tensor, x0: Tensor) -> tuple[Tensor, dict[str, float]]:
    """L1 loss, and the MSE relative to predicting no residual (cubic) for the logs."""
    loss = F.l1_loss(pred, x0)
    with torch.no_grad():
        mse = float(F.mse_loss(pred, x0))
        base = float((x0**2).mean())  # the error of predicting no residual (= cubic)
    return loss, {"l1": float(loss.detach()), "mse_over_cubic": mse / max(base, 1e-12)}
