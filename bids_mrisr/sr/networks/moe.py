"""MoEDiff-SR teacher: token-level gated mixture of conditional U-Net experts.

prediction(x_t, cond, t) = sum_k G_k(cond) * expert_k(x_t || cond, t), with per-pixel gates G that
depend on the condition only, so inference computes them once per tile and reuses them at every
sampling step (and can skip experts whose gate is ~0 over a whole tile).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.networks.blocks import check_cond, check_inputs, crop, pad_to_multiple
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.encoder import MultiScaleEncoder
from bids_mrisr.sr.networks.gating import TokenRouter, upsample_gates
from bids_mrisr.sr.networks.unet import ConditionalUNet

_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


class Expert(nn.Module):
    """One conditional U-Net plus its optional fixed inductive bias (see ``EXPERT_BIASES``)."""

    def __init__(self, config: ModelConfig, bias: str,
                 shape: tuple[int, tuple[int, ...], int]) -> None:
        super().__init__()
        self.bias = bias
        self.centre = config.context_slices
        extra = 1 if bias == "edge" else 0
        width, mults, blocks = shape  # config.expert_shape(k)
        self.unet = ConditionalUNet(
            in_channels=1 + config.in_condition_channels + extra,
            base_width=width,
            channel_mults=mults,
            num_res_blocks=blocks,
            time_dim=config.time_dim,
            dilated_mid=bias == "dilated",
            dropout=config.dropout,
            stem=config.stem,
            acquisition_features=config.acquisition_features,
        )
        if bias == "edge":  # fixed, so not part of the state dict
            kernel = torch.tensor(_LAPLACIAN).view(1, 1, 3, 3)
            self.register_buffer("laplacian", kernel, persistent=False)

    def forward(
        self, x_t: Tensor, cond: Tensor, t: Tensor, return_features: bool = False,
        acquisition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        parts = [x_t, cond]
        if self.bias == "edge":
            centre = cond[:, self.centre : self.centre + 1]
            lap = F.conv2d(F.pad(centre, (1, 1, 1, 1), mode="replicate"), self.laplacian)
            parts.append(lap)
        return self.unet(torch.cat(parts, dim=1), t, return_features=return_features,
                         acquisition=acquisition)


class MoETeacher(nn.Module):
    """Multi-scale transformer router + K expert U-Nets (the MoEDiff-SR teacher)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "teacher":
            raise ValueError(f"MoETeacher needs kind='teacher', got {config.kind!r}")
        self.config = config
        self.encoder = MultiScaleEncoder(
            in_channels=config.in_condition_channels,
            patch_sizes=config.patch_sizes,
            embed_dim=config.embed_dim,
            depth=config.encoder_depth,
            num_heads=config.num_heads,
            window_size=config.window_size,
        )
        self.router = TokenRouter(config.embed_dim, config.num_experts, config.gate_temperature,
                                  config.router_top_k)
        self.experts = nn.ModuleList(Expert(config, b, config.expert_shape(k))
                                     for k, b in enumerate(config.expert_biases))

    @property
    def expert_names(self) -> list[str]:
        return list(self.config.expert_names)

    @property
    def token_stride(self) -> int:
        """Pixels per routing token (the finest patch size)."""
        return self.encoder.token_stride

    # --- routing ------------------------------------------------------------------------------
    def route_tokens(self, cond: Tensor, return_logits: bool = False) -> Tensor:
        """Token-level routing probabilities (or logits) [B, K, ceil(H/s), ceil(W/s)].

        s = :attr:`token_stride`; token (i, j) covers pixels [s*i, s*i+s) x [s*j, s*j+s), so a
        gating loss can compare it with ``F.avg_pool2d(err, s, ceil_mode=True)``.
        """
        check_cond(cond, self.config.in_condition_channels)
        H, W = cond.shape[-2:]
        padded, _ = pad_to_multiple(cond, self.encoder.multiple)
        s = self.token_stride
        logits = crop(self.router.logits(self.encoder(padded)), (-(-H // s), -(-W // s)))
        return logits if return_logits else self.router.probabilities(logits)

    def route(self, cond: Tensor) -> Tensor:
        """Per-pixel gate maps [B, K, H, W], summing to 1 over K at every pixel."""
        probs = self.route_tokens(cond)
        return upsample_gates(probs, self.token_stride, tuple(cond.shape[-2:]))

    # --- experts ------------------------------------------------------------------------------
    def expert_outputs(
        self,
        x_t: Tensor,
        cond: Tensor,
        t: Tensor,
        experts: Sequence[int] | None = None,
        return_features: bool = False,
        acquisition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[list[Tensor]]]:
        """Per-expert predictions stacked as [B, len(experts), H, W] (all experts by default).

        With ``return_features`` also returns, per expert, its decoder features (coarse to fine).
        ``acquisition`` [B, F]: the acquisition code (conditioned teachers; None: unknown).
        """
        t = check_inputs(x_t, cond, t, self.config.in_condition_channels)
        idx = self._expert_indices(experts)
        preds, feats = [], []
        for k in idx:
            out = self.experts[k](x_t, cond, t, return_features=return_features,
                                  acquisition=acquisition)
            if return_features:
                out, f = out
                feats.append(f)
            preds.append(out)
        stacked = torch.cat(preds, dim=1)
        return (stacked, feats) if return_features else stacked

    def forward(
        self,
        x_t: Tensor,
        cond: Tensor,
        t: Tensor,
        gates: Tensor | None = None,
        active_experts: Sequence[int] | None = None,
        return_features: bool = False,
        acquisition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Gate-weighted prediction [B, 1, H, W].

        ``active_experts`` runs only those experts, with their gates renormalised to sum to 1
        (sparse inference). Features (``return_features``) are the gate-weighted sums of the
        experts' decoder features, coarse to fine, with gates average-pooled to each level.
        """
        t = check_inputs(x_t, cond, t, self.config.in_condition_channels)
        idx = self._expert_indices(active_experts)
        if gates is None:
            gates = self.route(cond)
        if gates.shape[0] != x_t.shape[0] or gates.shape[1] != self.config.num_experts or \
                gates.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(f"gates shape {tuple(gates.shape)} does not match input "
                             f"{tuple(x_t.shape)} with {self.config.num_experts} experts")
        g = gates[:, idx]
        g = g / g.sum(dim=1, keepdim=True).clamp_min(1e-12)
        res = self.expert_outputs(x_t, cond, t, idx, return_features=return_features,
                                  acquisition=acquisition)
        preds, feats = res if return_features else (res, None)
        out = (g * preds).sum(dim=1, keepdim=True)
        if not return_features:
            return out
        if len({tuple(f.shape[1] for f in fs) for fs in feats}) > 1:
            raise ValueError("the experts differ in architecture: their decoder features "
                             "cannot be mixed (feature guidance needs one architecture)")
        mixed = []
        for level in range(len(feats[0])):
            fh, fw = feats[0][level].shape[-2:]
            s = -(-x_t.shape[-2] // fh)
            gl = g if s == 1 else F.avg_pool2d(g, s, ceil_mode=True)
            gl = gl[..., :fh, :fw]
            gl = gl / gl.sum(dim=1, keepdim=True).clamp_min(1e-12)
            mixed.append(sum(gl[:, j : j + 1] * feats[j][level] for j in range(len(idx))))
        return out, mixed

    def _expert_indices(self, experts: Sequence[int] | None) -> list[int]:
        K = self.config.num_experts
        if experts is None:
            return list(range(K))
        idx = sorted({int(k) for k in experts})
        if not idx or idx[0] < 0 or idx[-1] >= K:
            raise ValueError(
                f"active experts {list(experts)} must be a non-empty subset of 0..{K - 1}"
            )
        return idx

