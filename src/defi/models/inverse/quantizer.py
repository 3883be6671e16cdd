"""Latent-action bottlenecks: the VQ-VAE codebook of the paper and the Table 8 alternatives.

All take `z [B, N, C]` (one vector per action query) and return a `Quantized` whose `quantized` carries the
straight-through gradient to `z`. The VQ codebook is written out here (about 100 lines) because we need its
dead-code re-initialisation and DDP-consistent EMA statistics, which the small libraries that exist
(vector-quantize-pytorch) would add as a dependency for one class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from defi.models.inverse.configuration import QuantizerConfig


class Quantized(NamedTuple):
    quantized: torch.Tensor  # [B, N, C], straight-through to the input
    indices: torch.Tensor | None  # vq, fsq: [B, N] code ids; binning: [B, N, C] bin ids; continuous: None
    loss: torch.Tensor  # scalar (commitment + codebook terms; 0 without a codebook)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def code_usage(indices: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """(fraction of codes used at least once, perplexity = exp(entropy) of the code histogram)."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=num_codes).float()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class VectorQuantizer(nn.Module):
    """VQ-VAE codebook (van den Oord et al. 2017) with EMA or loss-based updates and dead-code re-initialisation."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        k, c = config.codebook_size, config.code_dim
        self.codebook = nn.Parameter(torch.randn(k, c) * 0.1, requires_grad=config.update == "loss")
        self.register_buffer("ema_count", torch.ones(k))  # running assignments per batch
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("reinitialised", torch.zeros((), dtype=torch.long))  # dead codes re-drawn so far

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        codebook = F.normalize(self.codebook, dim=-1) if self.config.normalize else self.codebook
        return F.embedding(indices, codebook)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        codebook = self.codebook.detach()
        if self.config.normalize:
            codebook = F.normalize(codebook, dim=-1)
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)[None]
        return dist2.argmin(1)

    @torch.no_grad()
    def _random_rows(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        rows = flat[torch.randint(0, flat.shape[0], (count,), device=flat.device)]
        if _distributed():
            dist.broadcast(rows, 0)  # every rank must draw the same codes
        return rows

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        cfg = self.config
        if not bool(self.initialised):
            # data-dependent start: codes drawn from the first batch instead of far-away random vectors
            self.codebook.data.copy_(self._random_rows(flat, cfg.codebook_size))
            self.ema_sum.copy_(self.codebook.data)
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
            return
        onehot = F.one_hot(indices, cfg.codebook_size).type(flat.dtype)
        counts, sums = onehot.sum(0), onehot.T @ flat
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(cfg.ema_decay).add_(counts, alpha=1 - cfg.ema_decay)
        if cfg.update == "ema":
            self.ema_sum.mul_(cfg.ema_decay).add_(sums, alpha=1 - cfg.ema_decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (total + cfg.codebook_size * 1e-5) * total  # Laplace smoothing
            means = self.ema_sum / smoothed[:, None]
            self.codebook.data.copy_(F.normalize(means, dim=-1) if cfg.normalize else means)
        dead = self.ema_count < cfg.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            fresh = self._random_rows(flat, n_dead)
            self.codebook.data[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
            self.reinitialised += n_dead

    def forward(self, z: torch.Tensor) -> Quantized:
        b = z.shape[0]
        if self.config.normalize:
            z = F.normalize(z, dim=-1)
        flat = rearrange(z, "b n c -> (b n) c").float()
        indices = self.nearest(flat)
        if self.training:
            self._update(flat.detach(), indices)
            indices = self.nearest(flat)  # codes may have moved or been re-drawn
        quant = self.lookup(indices).to(z.dtype)
        quant = rearrange(quant, "(b n) c -> b n c", b=b)
        loss = self.config.commitment_weight * F.mse_loss(z, quant.detach())
        if self.config.update == "loss":
            loss = loss + F.mse_loss(quant, z.detach())
        straight_through = z + (quant - z).detach()
        return Quantized(straight_through, rearrange(indices, "(b n) -> b n", b=b), loss)


class BinningQuantizer(nn.Module):
    """Simple binning (Table 8): squash each dimension to (-1, 1) with tanh and round to `num_bins` levels."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config

    def forward(self, z: torch.Tensor) -> Quantized:
        levels = self.config.num_bins - 1
        unit = (torch.tanh(z) + 1) / 2 * levels  # [0, levels]
        bins = unit.round()
        quant = bins / levels * 2 - 1
        squashed = torch.tanh(z)
        return Quantized(squashed + (quant - squashed).detach(), bins.long(), z.new_zeros(()))


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023): no codebook to learn, so none to collapse. Each of the len(levels) dimensions is
    bounded with tanh and rounded to its own number of levels; the rounded values, read as a mixed-radix number,
    are the code id (one per query, like VQ), so code usage is measured on the implied codebook of prod(levels)."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        levels = torch.tensor(config.levels)
        # constants of the bound, derived from the levels once (buffers: they follow the module's device)
        half = (levels - 1).float() * (1 + 1e-3) / 2  # the 1e-3 lets tanh reach the outermost levels
        # an even number of levels has no zero level: shift by half a level so that tanh(0) sits between two levels
        offset = (levels % 2 == 0).float() * 0.5
        constants = {"half_range": half, "offset": offset, "shift": torch.atanh(offset / half), "width": levels // 2,
                     "radix": torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)}
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)
        self.norm = nn.BatchNorm1d(len(config.levels), affine=False) if config.standardize else None

    def forward(self, z: torch.Tensor) -> Quantized:
        if self.norm is not None:
            z = self.norm(z.reshape(-1, z.shape[-1]).float()).reshape(z.shape)
        bounded = torch.tanh(z.float() + self.shift) * self.half_range - self.offset
        rounded = bounded.round()
        quant = (bounded + (rounded - bounded).detach()) / self.width  # straight-through rounding, scaled to [-1, 1]
        digits = rounded.long() + self.width  # 0 .. level - 1 per dimension
        ids = (digits * self.radix).sum(-1)
        return Quantized(quant.to(z.dtype), ids, z.new_zeros(()))


class ContinuousLatent(nn.Module):
    """No bottleneck (Table 8 "continuous latent action", and the Table 7 baselines)."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config

    def forward(self, z: torch.Tensor) -> Quantized:
        return Quantized(z, None, z.new_zeros(()))


def build_quantizer(config: QuantizerConfig) -> nn.Module:
    kinds = {"vq": VectorQuantizer, "binning": BinningQuantizer, "fsq": FiniteScalarQuantizer,
             "continuous": ContinuousLatent}
    return kinds[config.kind](config)
