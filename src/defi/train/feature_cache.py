"""The frozen-feature cache every stage uses: frozen parts run ONCE per training clip, not every step.

A frozen encoder's output is a deterministic function of the clip (the GIDM's frame tokens of o_t and o_{t+n};
the DeFI policy's frame tokens and, while the GFDM is frozen, its one-step features with their fixed noise seed).
`build_feature_cache(fn, dataset)` runs `fn` on every clip in batches and keeps the results in memory (fp16 where
the values fit), together with any clip fields named in `keep` (instruction, actions, ...). `CachedDataset` then
serves the cached values as "cache.<name>" keys: added to the wrapped dataset's items, or, with no dataset, as the
whole item (no image decoding at all, what the GIDM pretraining wants). Inference never uses the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from defi.errors import DefiError

# fp16 keeps ~3 significant digits up to 65504; a cached value stays fp32 if its magnitude comes near that
_FP16_SAFE_ABS = 1e4

CACHE_PREFIX = "cache."


def _store_dtype(value: torch.Tensor) -> torch.dtype:
    if not value.is_floating_point():
        return value.dtype
    return torch.float16 if value.abs().max().item() < _FP16_SAFE_ABS else torch.float32


@dataclass
class FeatureCache:
    """Per-clip cached tensors [N, ...] (`features`) and kept clip fields (`fields`: tensors [N, ...] or lists)."""

    features: dict[str, torch.Tensor]
    fields: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.features.values())).shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features.values())

    def item(self, index: int) -> dict[str, Any]:
        out = {CACHE_PREFIX + name: value[index] for name, value in self.features.items()}
        out.update({name: value[index] for name, value in self.fields.items()})
        return out

    def batch(self, rows: slice | Sequence[int]) -> dict[str, Any]:
        """Rows of the cache as a batch (tensors stacked, lists of strings kept as lists)."""
        out: dict[str, Any] = {}
        for name, value in self.features.items():
            out[CACHE_PREFIX + name] = value[rows] if isinstance(rows, slice) else value[list(rows)]
        for name, value in self.fields.items():
            if isinstance(value, torch.Tensor):
                out[name] = value[rows] if isinstance(rows, slice) else value[list(rows)]
            else:
                out[name] = value[rows] if isinstance(rows, slice) else [value[i] for i in rows]
        return out


def build_feature_cache(fn: Callable[[dict[str, Any]], Mapping[str, torch.Tensor]], dataset: Dataset,
                        batch_size: int = 64, max_gib: float = 6.0, device: torch.device | str = "cpu",
                        keep: Sequence[str] = (), indices: Sequence[int] | None = None, progress: bool = True,
                        desc: str = "caching frozen features") -> FeatureCache:
    """Run `fn(batch)` -> {name: [b, ...]} over every clip of `dataset` (or of `indices`), in order.

    The first batch gives the per-clip size; if the clips need more than `max_gib` GiB the build stops before
    allocating, with a DefiError naming the estimate. `keep` names clip fields copied into the cache as they are
    (skipped when the dataset's items lack them).
    """
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    source = dataset if indices is None else Subset(dataset, list(indices))
    n = len(source)
    if n == 0:
        raise DefiError("clip dataset is empty: nothing to cache")
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=0)
    features: dict[str, torch.Tensor] = {}
    kept: dict[str, list[Any]] = {}
    start = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, total=len(loader), disable=not progress, leave=False):
            b = len(batch["instruction"]) if "instruction" in batch else next(iter(batch.values())).shape[0]
            out = fn(send_to_device(batch, device))
            if not features:
                dtypes = {name: _store_dtype(value) for name, value in out.items()}
                per_clip = sum(v[0].numel() * (torch.finfo(dtypes[k]).bits if dtypes[k].is_floating_point
                                               else torch.iinfo(dtypes[k]).bits) // 8 for k, v in out.items())
                need = per_clip * n / 2**30
                if need > max_gib:
                    raise DefiError(
                        f"feature cache: {n} clips x {per_clip / 2**10:.1f} KiB = {need:.2f} GiB, over the limit "
                        f"of {max_gib} GiB; raise the stage's cache_max_gib (if the RAM is there) or turn its "
                        "feature cache off to recompute the frozen parts every step")
                features = {name: torch.empty((n, *value.shape[1:]), dtype=dtypes[name]) for name, value in out.items()}
            for name, value in out.items():
                value = value.detach().cpu()
                if features[name].dtype == torch.float16 and value.abs().max().item() >= _FP16_SAFE_ABS:
                    features[name] = features[name].float()  # a later clip is out of fp16's safe range: keep fp32
                features[name][start:start + b] = value.to(features[name].dtype)
            for key in keep:
                if key in batch:
                    value = batch[key]
                    kept.setdefault(key, []).append(value if isinstance(value, torch.Tensor) else list(value))
            start += b
    fields = {key: torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for part in parts for x in part]
              for key, parts in kept.items()}
    return FeatureCache(features, fields)


class CachedDataset(Dataset):
    """Items with the cached frozen features as "cache.<name>" keys: the wrapped dataset's items plus the cache,
    or (no dataset) the cache alone. Other attributes (sample_weights, action_stats, ...) are the wrapped
    dataset's."""

    def __init__(self, cache: FeatureCache, dataset: Dataset | None = None):
        if dataset is not None and len(cache) != len(dataset):
            raise DefiError(f"feature cache holds {len(cache)} clips, the dataset {len(dataset)}")
        self.cache = cache
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index]) if self.dataset is not None else {}
        item.update(self.cache.item(index))
        return item

    def __getattr__(self, name: str) -> Any:
        # dunders are not forwarded: a wrapped Subset's __getitems__ would make the DataLoader skip __getitem__;
        # cache/dataset are missing only while unpickling
        if name.startswith("__") or name in ("dataset", "cache"):
            raise AttributeError(name)
        if self.dataset is None:
            raise AttributeError(name)
        return getattr(self.dataset, name)
