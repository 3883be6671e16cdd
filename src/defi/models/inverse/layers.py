"""Transformer pieces of the GIDM: attention with optional stored weights, a plain block, a spatial-temporal block.

Hand-written (about 80 lines) rather than `nn.TransformerEncoderLayer` because the GIDM needs two things that
layer does not give together: the attention weights of the action queries (paper Fig. 12) while still using the
fused `scaled_dot_product_attention` kernel on the normal path, and a block that attends over space and then
causally over time (Genie/UniVLA-style ST-transformer, Xu et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        self.store_attention = False  # set to keep the softmax weights of the next call in `last_attention`
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, D]; mask bool broadcastable to [B, H, S, S], True where a query may attend to a key."""
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.heads)
        if self.store_attention:
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            self.last_attention = weights.detach()
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(rearrange(y, "b h s d -> b s (h d)"))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block over one token sequence."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class STBlock(nn.Module):
    """Spatial attention within each time step, then causal attention over time at each spatial position.

    Tokens are laid out `[B, T, S, D]`. The temporal mask is lower-triangular, so a token at step t sees only
    steps <= t: the e_t step cannot see e_{t+n}, while the action queries at the e_{t+n} step see both.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.spatial = Attention(dim, heads, dropout)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, heads, dropout)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, spatial_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, S, D]; spatial_mask bool [B, S] (True on real tokens) applied as a key mask at every step."""
        b, t, s, _ = x.shape
        xs = rearrange(x, "b t s d -> (b t) s d")
        mask = None
        if spatial_mask is not None:
            mask = rearrange(spatial_mask[:, None].expand(b, t, s), "b t s -> (b t) 1 1 s")
        xs = xs + self.spatial(self.norm_s(xs), mask)
        xt = rearrange(xs, "(b t) s d -> (b s) t d", b=b)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        xt = xt + self.temporal(self.norm_t(xt), causal)
        xt = xt + self.mlp(self.norm_m(xt))
        return rearrange(xt, "(b s) t d -> b t s d", b=b)
