"""Token-level router: per-token softmax over experts, smoothly upsampled to per-pixel gates.

Each expert owns a learned query; routing logits are cosine(token, query) / temperature. Cosine
rather than raw dot products bounds the logits, so no expert can win every token just by growing
the norm of its query (a known collapse mode of dot-product routers, cf. X-MoE); the temperature
then sets how sharp the routing may become.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenRouter(nn.Module):
    """Token features [B, D, Ht, Wt] -> routing logits / probabilities [B, K, Ht, Wt]."""

    def __init__(self, embed_dim: int, num_experts: int, temperature: float,
                 top_k: int = 0) -> None:
        super().__init__()
        self.temperature = temperature
        self.top_k = top_k
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.queries = nn.Parameter(torch.randn(num_experts, embed_dim))

    def logits(self, tokens: Tensor) -> Tensor:
        f = self.proj(self.norm(tokens.permute(0, 2, 3, 1)))  # [B, Ht, Wt, D]
        f = F.normalize(f, dim=-1)
        q = F.normalize(self.queries, dim=-1)
        return torch.einsum("bhwd,kd->bkhw", f, q) / self.temperature

    def probabilities(self, logits: Tensor) -> Tensor:
        """Routing probabilities from logits: a softmax over experts, then (``top_k`` >= 1)
        only each token's k most probable experts, renormalised. Gradients reach the kept
        probabilities, so the router still learns which expert serves a token best."""
        probs = logits.softmax(dim=1)
        return keep_top_k(probs, self.top_k)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.probabilities(self.logits(tokens))


def keep_top_k(probs: Tensor, k: int) -> Tensor:
    """Zero all but the ``k`` largest of each token's probabilities over experts (dim 1) and
    renormalise; ``k`` = 0 or >= the number of experts leaves ``probs`` as they are."""
    if k <= 0 or k >= probs.shape[1]:
        return probs
    kept = torch.zeros_like(probs).scatter(1, probs.topk(k, dim=1).indices, 1.0)
    sparse = probs * kept
    return sparse / sparse.sum(dim=1, keepdim=True).clamp_min(1e-12)


def upsample_gates(probs: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Token probabilities [B, K, Ht, Wt] -> per-pixel gates [B, K, H, W].

    Bilinear interpolation of the *probabilities* (not the logits) is a convex combination of
    per-token distributions, so the per-pixel gates still sum to exactly 1 (up to rounding) and
    vary smoothly, with no blocky token edges. Pixel centres map to token coordinates with the
    half-pixel convention, so the grid is aligned whatever ``size``.
    """
    up = F.interpolate(probs, scale_factor=float(stride), mode="bilinear", align_corners=False)
    up = up[..., : size[0], : size[1]]
    return up / up.sum(dim=1, keepdim=True)
