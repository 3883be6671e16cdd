"""One multi-head attention for every transformer in defi: self-attention, or cross-attention to a context.

Written on torch's fused `scaled_dot_product_attention` rather than `nn.MultiheadAttention` because the models
need three things that module does not give together:
- keys/values projected once and reused (`project_kv`): the action adapter's condition tokens stay the same
  through its 10 denoising steps, so their keys and values are computed once per `sample` call (a KV cache);
- the attention weights of one call (`store_attention`), for the GIDM's action-query attention pictures (paper
  Fig. 12), while every other call keeps the fused kernel;
- a boolean mask broadcastable to [B, heads, S_q, S_k] (True where a query may attend to a key), for the GIDM's
  padded instructions and causal temporal attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from defi.errors import ShapeError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ShapeError(f"attention width {dim} must be divisible by its {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.store_attention = False  # set to keep the softmax weights of the next calls in `last_attention`
        self.last_attention: Tensor | None = None

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context [B, N, Dc] -> keys, values [B, heads, N, D / heads] (reusable across calls)."""
        keys, values = self.to_kv(context).chunk(2, dim=-1)
        split = "b n (h d) -> b h n d"
        return rearrange(keys, split, h=self.heads), rearrange(values, split, h=self.heads)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x [B, S, D] attends to itself, to `context` [B, N, Dc], or to precomputed `kv` from `project_kv`."""
        if kv is None:
            kv = self.project_kv(x if context is None else context)
        keys, values = kv
        queries = rearrange(self.to_q(x), "b s (h d) -> b h s d", h=self.heads)
        if self.store_attention:
            scores = (queries @ keys.transpose(-1, -2)) * queries.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            self.last_attention = weights.detach()
            attended = weights @ values
        else:
            attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                                      dropout_p=self.dropout if self.training else 0.0)
        return self.out(rearrange(attended, "b h s d -> b s (h d)"))
