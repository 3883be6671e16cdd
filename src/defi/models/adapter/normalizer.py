"""Maps actions (or proprio states) between dataset units and the adapter's normalised space.

`min_max` (default, as in Diffusion Policy) maps each dimension's [min, max] onto [-1, 1], which matches the
sampler's clipping to [-1, 1]; `mean_std` standardises. The statistics are buffers, so they are saved and restored
with the model's weights (`save_pretrained` / `from_pretrained`) and move with `.to(device)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from defi.errors import ConfigError, DefiError

NormalizationMode = Literal["min_max", "mean_std"]
STAT_KEYS = ("mean", "std", "min", "max")
EPS = 1e-6  # below this range/std a dimension is treated as constant (e.g. a gripper that never moves)


class ActionNormalizer(nn.Module):
    """Per-dimension normalisation of vectors [..., dim] from dataset statistics (mean/std/min/max, each [dim]).

    Build it empty with `ActionNormalizer(dim, mode)` inside a model's constructor (so `from_pretrained` can load the
    buffers), then call `set_stats(stats)` once from the training data; or use `ActionNormalizer.from_stats`.
    """

    def __init__(self, dim: int, mode: NormalizationMode = "min_max"):
        super().__init__()
        if mode not in ("min_max", "mean_std"):
            raise ConfigError(f"normalization mode {mode!r}: expected 'min_max' or 'mean_std'")
        self.dim = dim
        self.mode = mode
        for key in ("mean", "min"):
            self.register_buffer(key, torch.zeros(dim))
        for key in ("std", "max"):
            self.register_buffer(key, torch.ones(dim))
        self.register_buffer("has_stats", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], mode: NormalizationMode = "min_max") -> ActionNormalizer:
        dim = int(np.asarray(stats["mean"] if "mean" in stats else stats["min"]).reshape(-1).shape[0])
        normalizer = cls(dim, mode)
        normalizer.set_stats(stats)
        return normalizer

    def set_stats(self, stats: Mapping[str, Any]) -> None:
        """Copy statistics (numpy arrays, tensors or lists of length `dim`) into the buffers."""
        needed = ("min", "max") if self.mode == "min_max" else ("mean", "std")
        for key in needed:
            if key not in stats:
                raise DefiError(f"normalization stats lack {key!r} (mode {self.mode} needs {', '.join(needed)})")
        for key in STAT_KEYS:
            if key not in stats:
                continue
            value = torch.as_tensor(np.asarray(stats[key], dtype=np.float32)).reshape(-1)
            if value.shape[0] != self.dim:
                raise DefiError(f"normalization stats {key!r} have {value.shape[0]} values: expected {self.dim}")
            if not torch.isfinite(value).all():
                raise DefiError(f"normalization stats {key!r} contain NaN or infinity: {value.tolist()}")
            getattr(self, key).copy_(value)
        if self.mode == "min_max" and bool((self.max < self.min).any()):
            raise DefiError(f"normalization stats: max {self.max.tolist()} is below min {self.min.tolist()}")
        self.has_stats.fill_(True)

    def _require_stats(self) -> None:
        if not bool(self.has_stats):
            raise DefiError("ActionNormalizer has no statistics: call set_stats(dataset stats) before training")

    def _offset_scale(self) -> tuple[Tensor, Tensor]:
        """x_normalised = (x - offset) / scale; constant dimensions get scale 1 (they map to 0)."""
        if self.mode == "min_max":
            half_range = (self.max - self.min) / 2
            offset = (self.max + self.min) / 2
            return offset, torch.where(half_range > EPS, half_range, torch.ones_like(half_range))
        return self.mean, torch.where(self.std > EPS, self.std, torch.ones_like(self.std))

    def normalize(self, x: Tensor) -> Tensor:
        self._require_stats()
        offset, scale = self._offset_scale()
        return (x - offset.to(x.dtype)) / scale.to(x.dtype)

    def unnormalize(self, x: Tensor) -> Tensor:
        self._require_stats()
        offset, scale = self._offset_scale()
        return x * scale.to(x.dtype) + offset.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode}"
