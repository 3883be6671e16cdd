"""Finetuning's feature cache: the frozen parts of the DeFI policy run ONCE per training clip, not every step.

While the GFDM is frozen (Table 9's default `gidm+adapter`, `adapter`, and the no-pretraining baseline whose
random GFDM is frozen too) its one-step features are a deterministic function of the clip (fixed noise seed,
fixed timestep), as are the frozen frame encoder's tokens of o_t. `build_feature_cache` computes them for every
clip in batches and keeps them in memory (fp16 where the values fit); `CachedClipDataset` adds them to each item
as "cache.<name>" keys, which `DeFIPolicy.forward` takes instead of recomputing. When the GFDM trains only the
frame encoder's tokens are cached. Inference (`act`, `predict_actions`) never uses the cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from defi.errors import DefiError
from defi.models.policy import DeFIPolicy

# fp16 keeps ~3 significant digits up to 65504; a cached value stays fp32 if its magnitude comes near that
_FP16_SAFE_ABS = 1e4


def _store_dtype(value: torch.Tensor) -> torch.dtype:
    return torch.float16 if value.abs().max().item() < _FP16_SAFE_ABS else torch.float32


def build_feature_cache(policy: DeFIPolicy, dataset: Dataset, batch_size: int = 64, max_gib: float = 6.0,
                        device: torch.device | str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """{name: tensor [N, ...] on the CPU} of `policy.frozen_features` for every item of `dataset`, in order.

    The first batch gives the per-clip size; if N clips need more than `max_gib` GiB the build stops before
    allocating, with a DefiError naming the estimate (set `cache_frozen=False` or raise `cache_max_gib`).
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    if n == 0:
        raise DefiError("clip dataset is empty: nothing to cache")
    device = torch.device(device) if device is not None else next(policy.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    store: dict[str, torch.Tensor] = {}
    was_training = policy.training
    policy.eval()  # frozen parts are in eval mode during training too (DeFIPolicy.train)
    start = 0
    try:
        for batch in tqdm(loader, desc="caching frozen features", total=len(loader), disable=not progress,
                          leave=False):
            feats = policy.frozen_features(batch["images"].to(device), batch["instruction"])
            b = batch["images"].shape[0]
            if not store:
                dtypes = {name: _store_dtype(value) for name, value in feats.items()}
                per_clip = sum(v[0].numel() * torch.finfo(dtypes[k]).bits // 8 for k, v in feats.items())
                need = per_clip * n / 2**30
                if need > max_gib:
                    raise DefiError(
                        f"feature cache: {n} clips x {per_clip / 2**10:.1f} KiB = {need:.2f} GiB, over the limit "
                        f"cache_max_gib={max_gib}; raise cache_max_gib (if the RAM is there) or set "
                        "cache_frozen=False to recompute the frozen parts every step")
                store = {name: torch.empty((n, *value.shape[1:]), dtype=dtypes[name])
                         for name, value in feats.items()}
            for name, value in feats.items():
                value = value.cpu()
                if store[name].dtype == torch.float16 and value.abs().max().item() >= _FP16_SAFE_ABS:
                    store[name] = store[name].float()  # a later clip is out of fp16's safe range: keep fp32
                store[name][start:start + b] = value.to(store[name].dtype)
            start += b
    finally:
        policy.train(was_training)
    return store


def cache_nbytes(store: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in store.values())


class CachedClipDataset(Dataset):
    """A clip dataset whose items also carry the cached frozen features ("cache.<name>"). Other attributes
    (sample_weights, action_stats, ...) are the wrapped dataset's."""

    def __init__(self, dataset: Dataset, store: dict[str, torch.Tensor]):
        for name, value in store.items():
            if value.shape[0] != len(dataset):
                raise DefiError(f"feature cache {name!r} holds {value.shape[0]} clips, the dataset {len(dataset)}")
        self.dataset = dataset
        self.store = store

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        for name, value in self.store.items():
            item[f"cache.{name}"] = value[index]
        return item

    def __getattr__(self, name: str) -> Any:
        # dunders are not forwarded: a wrapped Subset's __getitems__ would make the DataLoader skip __getitem__;
        # dataset/store are missing only while unpickling
        if name.startswith("__") or name in ("dataset", "store"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
