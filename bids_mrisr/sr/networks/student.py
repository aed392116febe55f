"""The distilled student: one small conditional U-Net of the same family as the experts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bids_mrisr.sr.networks.blocks import check_inputs
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.unet import ConditionalUNet


class StudentDenoiser(nn.Module):
    """Same call signature as the teacher so samplers and inference treat both alike."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "student":
            raise ValueError(f"StudentDenoiser needs kind='student', got {config.kind!r}")
        self.config = config
        self.unet = ConditionalUNet(
            in_channels=1 + config.in_condition_channels,
            base_width=config.base_width,
            channel_mults=config.channel_mults,
            num_res_blocks=config.num_res_blocks,
            time_dim=config.time_dim,
            dropout=config.dropout,
            stem=config.stem,
        )

    def route(self, cond: Tensor) -> None:
        """The student has no experts, hence no gates."""
        return None

    def forward(
        self,
        x_t: Tensor,
        cond: Tensor,
        t: Tensor,
        gates: Tensor | None = None,
        active_experts: Sequence[int] | None = None,
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Prediction [B, 1, H, W]; ``gates`` and ``active_experts`` are ignored."""
        t = check_inputs(x_t, cond, t, self.config.in_condition_channels)
        return self.unet(torch.cat([x_t, cond], dim=1), t, return_features=return_features)
