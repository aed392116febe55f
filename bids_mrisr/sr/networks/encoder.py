"""Multi-scale transformer encoder over the condition slices (the teacher's router backbone).

Tokens: patch embeddings of the condition stack at several patch sizes (default 16/8/4 px).
Position: a depthwise 3x3 conv on each scale's token grid within each window (conditional
positional encoding) plus a learned per-scale embedding. This is translation-equivariant, so
overlapping inference tiles see the same features for the same anatomy (absolute position
embeddings would not), and windows never read their neighbours: a tile whose origin is on the
window grid routes exactly like the whole slice except within ~half a coarse patch of its edges
(the final coarse-to-fine interpolation).

Attention: tokens of *all* scales that fall in the same window (``window_size`` coarsest patches
per side, default 4 -> 64x64 px holding 16 + 64 + 256 tokens) attend to each other, so every fine
token sees the coarse context of its surroundings and vice versa. Windowing keeps the cost linear
in image size (global attention over a 256x256 slice would be 5376 tokens and ~15x the cost);
``window_size=0`` selects global attention.

Fusion: each scale's token grid is bilinearly upsampled to the finest grid and summed (an FPN-like
top-down merge), giving one feature vector per finest token; the router gates on that grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block using ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, T, D] (N = batch x windows)."""
        N, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(N, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(N, T, D))
        return x + self.mlp(self.norm2(x))


def _to_windows(grid: Tensor, wh: int, ww: int) -> Tensor:
    """[B, D, H, W] -> [B * nWindows, D, wh, ww] (row-major windows, each a small image)."""
    B, D, H, W = grid.shape
    g = grid.view(B, D, H // wh, wh, W // ww, ww).permute(0, 2, 4, 1, 3, 5)
    return g.reshape(B * (H // wh) * (W // ww), D, wh, ww)


def _from_windows(tokens: Tensor, B: int, H: int, W: int, wh: int, ww: int) -> Tensor:
    """Inverse of :func:`_to_windows`."""
    D = tokens.shape[-1]
    g = tokens.view(B, H // wh, W // ww, wh, ww, D).permute(0, 5, 1, 3, 2, 4)
    return g.reshape(B, D, H, W)


class MultiScaleEncoder(nn.Module):
    """Condition stack -> per-scale token features -> fused features on the finest token grid."""

    def __init__(
        self,
        in_channels: int,
        patch_sizes: tuple[int, ...],
        embed_dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
    ) -> None:
        super().__init__()
        self.patch_sizes = tuple(patch_sizes)
        self.window_size = window_size
        self.embed_dim = embed_dim
        self.embeds = nn.ModuleList(nn.Conv2d(in_channels, embed_dim, p, stride=p)
                                    for p in patch_sizes)
        self.pos = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, 3, padding=1, groups=embed_dim)
                                 for _ in patch_sizes)
        self.scale_embed = nn.Parameter(torch.randn(len(patch_sizes), embed_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def multiple(self) -> int:
        """Input H and W must be multiples of this (coarsest patch x window)."""
        return self.patch_sizes[0] * max(self.window_size, 1)

    @property
    def token_stride(self) -> int:
        """Pixels per token on the fused (finest) grid."""
        return self.patch_sizes[-1]

    def forward(self, cond: Tensor) -> Tensor:
        """cond: [B, C, H, W] with H, W multiples of :attr:`multiple` -> [B, D, H/p, W/p]."""
        B, _, H, W = cond.shape
        if H % self.multiple or W % self.multiple:
            raise ValueError(f"encoder input {H}x{W} is not a multiple of {self.multiple}")
        if self.window_size > 0:
            n_wh, n_ww = H // self.multiple, W // self.multiple  # windows per side
        else:
            n_wh = n_ww = 1
        parts, shapes, win = [], [], []
        for i, (emb, pos) in enumerate(zip(self.embeds, self.pos, strict=True)):
            e = emb(cond)
            h, w = e.shape[-2:]
            wh, ww = h // n_wh, w // n_ww
            # positional conv inside each window: windows stay independent of one another
            e = _to_windows(e, wh, ww)
            e = e + pos(e) + self.scale_embed[i][None, :, None, None]
            parts.append(e.flatten(2).transpose(1, 2))
            shapes.append((h, w))
            win.append((wh, ww))
        tokens = torch.cat(parts, dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        fine = shapes[-1]
        fused = None
        start = 0
        for (h, w), (wh, ww) in zip(shapes, win, strict=True):
            part = tokens[:, start : start + wh * ww]
            start += wh * ww
            grid = _from_windows(part, B, h, w, wh, ww)
            if (h, w) != fine:
                grid = F.interpolate(grid, size=fine, mode="bilinear", align_corners=False)
            fused = grid if fused is None else fused + grid
        return fused
