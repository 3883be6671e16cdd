"""Transformer blocks on the shared `Attention`: a pre-norm block over one sequence, and a spatial-temporal
block (Genie/UniVLA-style ST-transformer, Xu et al. 2020) that attends within each time step and then causally
over time."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from defi.models.layers.attention import Attention


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP over one token sequence [B, S, D]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class SpatioTemporalBlock(nn.Module):
    """Spatial attention within each time step, then causal attention over time at each spatial position.

    Tokens are laid out `[B, T, S, D]`. The temporal mask is lower-triangular, so a token at step t sees only
    steps <= t: in the GIDM the e_t step cannot see e_{t+n}, while the action queries at the e_{t+n} step see both.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.spatial = Attention(dim, heads, dropout)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, heads, dropout)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, spatial_mask: Tensor | None = None, keep_last: int = 0) -> Tensor:
        """x [B, T, S, D]; spatial_mask bool [B, S] (True on real tokens) applied as a key mask at every step.

        `keep_last=k` returns only the last k tokens of the last step, [B, 1, k, D], computing only what they
        depend on: every token's keys/values in the spatial attention, the k positions' temporal attention,
        the last step's MLP rows (the GIDM reads only its action queries at the last step; per row the same
        operations as the full block)."""
        b, t, s, _ = x.shape
        xs = rearrange(x, "b t s d -> (b t) s d")
        mask = None
        if spatial_mask is not None:
            mask = rearrange(spatial_mask[:, None].expand(b, t, s), "b t s -> (b t) 1 1 s")
        normed = self.norm_s(xs)
        if keep_last:
            kv = self.spatial.project_kv(normed)
            xs, normed = xs[:, -keep_last:], normed[:, -keep_last:]
            xs = xs + self.spatial(normed, mask=mask, kv=kv)
        else:
            xs = xs + self.spatial(normed, mask=mask)
        xt = rearrange(xs, "(b t) s d -> (b s) t d", b=b)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        xt = xt + self.temporal(self.norm_t(xt), mask=causal)
        if keep_last:
            xt = xt[:, -1:]
        xt = xt + self.mlp(self.norm_m(xt))
        return rearrange(xt, "(b s) t d -> b t s d", b=b)
