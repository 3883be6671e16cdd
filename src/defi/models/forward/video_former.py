"""Video Former (VPP, Hu et al. 2024; DeFI §3.3): compresses the GFDM's one-step features into a fixed token set.

Input: the feature maps of one or more denoiser blocks, each [n, f, C_l, h_l, w_l] (as `pipeline.one_step`
returns them). Each block's channels are projected to `dim`, given a 2-D sin-cos position (diffusers'
`get_2d_sincos_pos_embed`) and a learnt layer embedding, and the tokens of all blocks of a frame form that frame's
memory. `num_queries` learnable queries per frame then alternate, per block of the former:
spatial cross-attention over their frame's memory -> temporal self-attention across frames (same query index,
learnt frame embedding) -> MLP. Output: [n, f * num_queries, dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from einops import rearrange
from torch import nn

from defi.config import Config, validate_config
from defi.errors import ShapeError
from defi.models.base import PretrainedMixin
from defi.models.layers import Attention


@dataclass
class VideoFormerConfig(Config):
    # feature layer names and their channel widths, in order (see ForwardDynamicsConfig.feature_channels())
    layers: tuple[str, ...] = ("mid_block", "up_blocks.0")
    in_channels: tuple[int, ...] = (64, 64)
    num_frames: int = 4
    dim: int = 128
    num_queries: int = 8
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        self.check(len(self.layers) >= 1, "layers", "at least one feature layer")
        self.check(len(self.in_channels) == len(self.layers), "in_channels", f"{len(self.layers)} widths (one per layer)")
        self.check(all(c >= 1 for c in self.in_channels), "in_channels", "positive widths")
        self.check(self.num_frames >= 1, "num_frames", "a positive number of frames")
        self.check(self.dim % 4 == 0, "dim", "a multiple of 4 (2-D sin-cos positions)")
        self.check(self.heads >= 1 and self.dim % self.heads == 0, "heads", f"a divisor of dim={self.dim}")
        self.check(self.num_queries >= 1, "num_queries", "a positive number of queries per frame")
        self.check(self.depth >= 1, "depth", "at least one block")

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.num_queries


class VideoFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.spatial = Attention(dim, heads)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, frame_embed: torch.Tensor, n: int) -> torch.Tensor:
        """queries [(n f), q, d], memory [(n f), s, d], frame_embed [f, d] -> [(n f), q, d]."""
        q = self.norm_q(queries)
        m = self.norm_memory(memory)
        queries = queries + self.spatial(q, context=m)
        per_query = rearrange(queries, "(n f) q d -> (n q) f d", n=n)
        t = self.norm_t(per_query) + frame_embed
        per_query = per_query + self.temporal(t)
        queries = rearrange(per_query, "(n q) f d -> (n f) q d", n=n)
        return queries + self.mlp(self.norm_mlp(queries))


class VideoFormer(PretrainedMixin, nn.Module):
    config_class = VideoFormerConfig

    def __init__(self, config: VideoFormerConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        d = config.dim
        self.proj = nn.ModuleList(nn.Linear(c, d) for c in config.in_channels)
        self.layer_embed = nn.Parameter(torch.zeros(len(config.layers), d))
        self.frame_embed = nn.Parameter(torch.randn(config.num_frames, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(config.num_queries, d) * 0.02)
        self.blocks = nn.ModuleList(VideoFormerBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d)

    def _position(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The 2-D sin-cos position embedding [h * w, dim], computed once per grid (a few dozen small operations
        otherwise repeated at every call; kept in a plain dict, not saved)."""
        cache = self.__dict__.setdefault("_positions", {})
        key = (h, w, device)
        if key not in cache:
            with torch.inference_mode(False):  # a normal tensor even if first made under inference mode
                cache[key] = get_2d_sincos_pos_embed(self.config.dim, (h, w), base_size=max(h, w), device=device,
                                                     output_type="pt")
        return cache[key]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features {layer: [n, f, C, h, w]} -> tokens [n, f * num_queries, dim]."""
        cfg = self.config
        memory = []
        n = f = None
        for i, name in enumerate(cfg.layers):
            if name not in features:
                raise ShapeError(f"VideoFormer expects feature layer {name!r}; got {sorted(features)}")
            x = features[name]
            if x.ndim != 5 or x.shape[1] != cfg.num_frames or x.shape[2] != cfg.in_channels[i]:
                raise ShapeError(
                    f"feature {name!r}: expected [n, {cfg.num_frames}, {cfg.in_channels[i]}, h, w], got {list(x.shape)}"
                )
            n, f, _, h, w = x.shape
            tokens = self.proj[i](rearrange(x, "n f c h w -> (n f) (h w) c").to(self.queries.dtype))
            pos = self._position(h, w, x.device)
            memory.append(tokens + pos.to(tokens.dtype) + self.layer_embed[i])
        memory = torch.cat(memory, dim=1)
        queries = self.queries.unsqueeze(0).expand(n * f, -1, -1)
        for block in self.blocks:
            queries = block(queries, memory, self.frame_embed, n)
        return rearrange(self.norm(queries), "(n f) q d -> n (f q) d", n=n)


def video_former_config(forward_config, **overrides) -> VideoFormerConfig:
    """A `VideoFormerConfig` reading every feature layer a GFDM config exposes, at its real width."""
    widths = forward_config.feature_channels()
    return VideoFormerConfig(layers=tuple(widths), in_channels=tuple(widths.values()),
                             num_frames=forward_config.num_frames, **overrides)
