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
            acquisition_features=config.acquisition_features,
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
        acquisition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Prediction [B, 1, H, W]; ``gates`` and ``active_experts`` are ignored;
        ``acquisition`` [B, F] is the :func:`~bids_mrisr.sr.networks.config.acquisition_code`
        of each slice's scan (conditioned networks; None: unknown)."""
        t = check_inputs(x_t, cond, t, self.config.in_condition_channels)
        if acquisition is not None and acquisition.shape != (x_t.shape[0],
                                                             self.config.acquisition_features):
            raise ValueError(f"acquisition must be [B, {self.config.acquisition_features}], "
                             f"got {tuple(acquisition.shape)}")
        return self.unet(torch.cat([x_t, cond], dim=1), t, return_features=return_features,
                         acquisition=acquisition)
