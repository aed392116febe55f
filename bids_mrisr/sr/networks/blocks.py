"""Building blocks shared by the U-Nets: timestep embedding, FiLM residual blocks, resampling,
and the pad/crop helpers that let every network accept any H x W."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad the last two dims on the bottom/right up to a multiple; return the original size.

    Only bottom/right padding keeps pixel (0, 0) on the same token/pooling grid whatever the
    image size, so overlapping tiles see consistent grids. Reflect padding avoids a hard edge; it
    needs pad < size, so tiny inputs fall back to replicate.
    """
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph == 0 and pw == 0:
        return x, (H, W)
    mode = "reflect" if ph < H and pw < W else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (H, W)


def crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]


def num_groups(channels: int) -> int:
    """GroupNorm groups: about 4 channels per group (narrow nets), at most 8 groups."""
    for g in (8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t[B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal features -> MLP; the result feeds every block's FiLM projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with FiLM time conditioning (scale/shift on norm2).

    FiLM rather than additive bias because the noise level changes the *gain* the block needs,
    not only an offset (as in improved-diffusion's ``use_scale_shift_norm``).
    """

    def __init__(
        self, in_ch: int, out_ch: int, time_dim: int, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.film = nn.Linear(time_dim, 2 * out_ch)
        self.norm2 = norm(out_ch)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """``temb`` is ``[B, time_dim]``, or ``[1, time_dim]`` for one embedding shared by the
        whole batch (inference; :meth:`ConditionalUNet.forward` decides once per call)."""
        scale, shift = self.film(F.silu(temb)).chunk(2, dim=1)
        if temb.shape[0] == 1 and not torch.is_grad_enabled():
            return self._forward_shared_film(x, scale[0], shift[0])
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.conv2(self.drop(F.silu(h)))
        return h + self.skip(x)

    def _forward_shared_film(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """The same maths when every slice of the batch has one FiLM (inference: one scan,
        one t): FiLM folds into norm2's affine and activations work in place, which saves
        three passes over the largest tensors (a memory-bound third of CPU inference)."""
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        g = self.norm2
        h = F.group_norm(h, g.num_groups, g.weight * (1 + scale), g.bias * (1 + scale) + shift,
                         g.eps)
        h = self.conv2(self.drop(F.silu(h, inplace=True)))
        return h.add_(self.skip(x))


def batch_uniform(rows: Tensor) -> bool:
    """Whether a ``[B, C]`` tensor has the same row for every batch element."""
    return bool((rows == rows[:1]).all())


class Downsample(nn.Module):
    """Strided 3x3 conv: halves resolution and changes width in one cheap op."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """3x3 conv at the *low* resolution, then nearest x2.

    Convolving before upsampling costs 4x less than after, and nearest replication cannot produce
    checkerboard artefacts (unlike transposed convolutions).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


def check_cond(cond: Tensor, channels: int) -> None:
    """Fail early with a readable message rather than deep inside a conv."""
    if cond.ndim != 4 or cond.shape[1] != channels:
        raise ValueError(f"condition must be [B, {channels}, H, W], got {tuple(cond.shape)}")


def check_inputs(x_t: Tensor, cond: Tensor, t: Tensor | float, channels: int) -> Tensor:
    """Validate denoiser inputs; return t as a float tensor [B] (a scalar t is broadcast)."""
    check_cond(cond, channels)
    if x_t.ndim != 4 or x_t.shape[1] != 1 or x_t.shape[0] != cond.shape[0] or \
            x_t.shape[-2:] != cond.shape[-2:]:
        raise ValueError(f"x_t {tuple(x_t.shape)} must be [B, 1, H, W] matching condition "
                         f"{tuple(cond.shape)}")
    t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    if t.shape != (x_t.shape[0],):
        raise ValueError(f"t must be a scalar or [B], got {tuple(t.shape)}")
    return t
