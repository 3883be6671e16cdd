"""Mixtures of clip datasets with per-source weights (paper Tables 11-12: action-free and labeled sources mixed).

The mixture concatenates its datasets and exposes `sample_weights`, one weight per index, such that sampling
indices with replacement in proportion to them draws source s with probability weight_s / sum(weights),
whatever the sources' sizes. The trainer's sampler uses that attribute; `sample_indices` does the same for
scripts and tests, and `realised_proportions` reports what a draw actually contained.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from defi.data.clips import ClipDataset
from defi.errors import DefiError


def merge_stats(parts: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor] | None:
    """Combine (stats, frame count) of several sources into the statistics of their union."""
    parts = [(s, n) for s, n in parts if s is not None and n > 0]
    if not parts:
        return None
    total = sum(n for _, n in parts)
    mean = sum(s["mean"] * n for s, n in parts) / total
    second = sum((s["std"] ** 2 + s["mean"] ** 2) * n for s, n in parts) / total
    return {
        "mean": mean,
        "std": (second - mean**2).clamp_min(0).sqrt(),
        "min": torch.stack([s["min"] for s, _ in parts]).amin(0),
        "max": torch.stack([s["max"] for s, _ in parts]).amax(0),
    }


class MixtureDataset(Dataset):
    """Several `ClipDataset`s with per-source weights; items are those of the member datasets."""

    def __init__(self, datasets: Sequence[ClipDataset], weights: Sequence[float]) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise DefiError(f"mixture: got {len(datasets)} datasets and {len(weights)} weights; expected equal, >= 1")
        if any(w <= 0 for w in weights):
            raise DefiError(f"mixture weights {list(weights)}: expected all > 0")
        empty = [str(d.root) for d in datasets if len(d) == 0]
        if empty:
            raise DefiError(f"mixture source {empty[0]}: no clips in this split")
        shapes = {(d.image_size, len(d.camera_keys), d.future_frames, d.action_horizon) for d in datasets}
        if len(shapes) != 1:
            raise DefiError(f"mixture sources disagree on (image size, views, future frames, horizon): {shapes}")
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.names = [f"{d.source}:{d.root.name}" for d in datasets]
        self._starts = np.concatenate([[0], np.cumsum([len(d) for d in datasets])])
        total = sum(self.weights)
        per_index = [torch.full((len(d),), w / total / len(d), dtype=torch.float64) for d, w in zip(datasets, weights)]
        self.sample_weights = torch.cat(per_index)
        self.action_stats = merge_stats([(d.action_stats, len(d)) for d in datasets if d.has_actions])
        self.state_stats = merge_stats([(d.state_stats, len(d)) for d in datasets if d.has_state])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self._starts, index, side="right") - 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        s = self.source_of(int(index))
        return self.datasets[s][int(index - self._starts[s])]

    def expected_proportions(self) -> dict[str, float]:
        total = sum(self.weights)
        return {name: w / total for name, w in zip(self.names, self.weights)}

    def sample_indices(self, num: int, seed: int = 0) -> torch.Tensor:
        """Indices drawn with replacement by `sample_weights`, as the trainer's sampler does."""
        gen = torch.Generator().manual_seed(seed)
        return torch.multinomial(self.sample_weights, num, replacement=True, generator=gen)

    def realised_proportions(self, indices: Sequence[int] | torch.Tensor) -> dict[str, float]:
        """The fraction of `indices` that came from each source."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else list(indices), dtype=np.int64)
        if len(idx) == 0:
            return {name: 0.0 for name in self.names}
        counts = Counter(np.searchsorted(self._starts, idx, side="right") - 1)
        return {name: counts.get(i, 0) / len(idx) for i, name in enumerate(self.names)}
