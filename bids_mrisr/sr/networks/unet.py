"""Conditional denoising U-Net: one expert of the teacher, and (smaller) the whole student.

Input is the noisy residual concatenated with the condition stack (plus optional fixed feature
channels); output is the prediction in the configured parametrisation (v by default). One skip
connection per level keeps the full-resolution work (the expensive part on CPU) to a minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_mrisr.sr.networks.blocks import (
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    batch_uniform,
    crop,
    norm,
    pad_to_multiple,
)


class ConditionalUNet(nn.Module):
    """U-Net with FiLM timestep conditioning; accepts any H x W (pads and crops internally)."""

    def __init__(
        self,
        in_channels: int,
        base_width: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        time_dim: int,
        out_channels: int = 1,
        dilated_mid: bool = False,
        dropout: float = 0.0,
        stem: int = 1,
        acquisition_features: int = 0,
    ) -> None:
        super().__init__()
        widths = [base_width * m for m in channel_mults]
        self.widths = widths
        self.stem = stem
        self.multiple = stem * 2 ** (len(widths) - 1)
        self.time = TimeEmbedding(time_dim)
        self.acquisition: nn.Linear | None = None
        if acquisition_features:
            # Added to the timestep embedding; zero at start, so a blind network's weights
            # load unchanged and compute exactly what they did (fine-tuning starts there).
            self.acquisition = nn.Linear(acquisition_features, time_dim)
            nn.init.zeros_(self.acquisition.weight)
            nn.init.zeros_(self.acquisition.bias)
        self.in_conv = nn.Conv2d(in_channels * stem * stem, widths[0], 3, padding=1)

        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, w in enumerate(widths):
            self.enc.append(
                nn.ModuleList(ResBlock(w, w, time_dim, dropout=dropout)
                              for _ in range(num_res_blocks))
            )
            if i + 1 < len(widths):
                self.down.append(Downsample(w, widths[i + 1]))

        dil = 2 if dilated_mid else 1
        self.mid = nn.ModuleList(
            [ResBlock(widths[-1], widths[-1], time_dim, dilation=dil, dropout=dropout)]
        )

        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            if i + 1 < len(widths):
                self.up.append(Upsample(widths[i + 1], w))
            blocks = [ResBlock(2 * w, w, time_dim, dropout=dropout)]
            blocks += [ResBlock(w, w, time_dim, dropout=dropout)
                       for _ in range(num_res_blocks - 1)]
            self.dec.append(nn.ModuleList(blocks))
        self.out_norm = norm(widths[0])
        self.out_conv = nn.Conv2d(widths[0], out_channels * stem * stem, 3, padding=1)

    def forward(
        self, x: Tensor, t: Tensor, return_features: bool = False,
        acquisition: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """x: [B, in_channels, H, W], t: [B] -> [B, out_channels, H, W].

        ``acquisition`` [B, acquisition_features] (conditioned networks only; None: all
        entries unknown, i.e. zeros).

        With ``return_features`` also returns the decoder level outputs, coarse to fine, the
        level at downsampling factor s cropped to ceil(H/s) x ceil(W/s) (the last one is H x W).
        """
        x, size = pad_to_multiple(x, self.multiple)
        temb = self.time(t)
        if self.acquisition is not None:
            if acquisition is None:  # every entry unknown
                acquisition = temb.new_zeros((temb.shape[0], self.acquisition.in_features))
            temb = temb + self.acquisition(acquisition.to(temb.dtype))
        if not torch.is_grad_enabled() and temb.shape[0] > 1 and batch_uniform(temb):
            temb = temb[:1]  # one scan, one t: every block folds one FiLM into its norm
        if self.stem > 1:
            x = F.pixel_unshuffle(x, self.stem)
        h = self.in_conv(x)
        skips = []
        for i, blocks in enumerate(self.enc):
            for blk in blocks:
                h = blk(h, temb)
            skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        for blk in self.mid:
            h = blk(h, temb)
        feats = []
        n = len(self.dec)
        for j, blocks in enumerate(self.dec):
            if j > 0:
                h = self.up[j - 1](h)
            h = torch.cat([h, skips[n - 1 - j]], dim=1)
            for blk in blocks:
                h = blk(h, temb)
            if return_features:
                s = self.stem * 2 ** (n - 1 - j)
                feats.append(crop(h, (-(-size[0] // s), -(-size[1] // s))))
        out = self.out_conv(F.silu(self.out_norm(h), inplace=not torch.is_grad_enabled()))
        if self.stem > 1:
            out = F.pixel_shuffle(out, self.stem)
        out = crop(out, size)
        return (out, feats) if return_features else out
