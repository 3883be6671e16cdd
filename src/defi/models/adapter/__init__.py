"""The Diffusion-Transformer action adapter (DiT head that denoises action chunks) and action normalisation."""

from defi.models.adapter.config import (
    ADAPTER_PRESETS,
    ActionAdapterConfig,
    adapter_paper,
    adapter_small,
    adapter_tiny,
)
from defi.models.adapter.dit import DiTActionAdapter, pad_masked_actions
from defi.models.adapter.normalizer import ActionNormalizer

__all__ = [
    "ADAPTER_PRESETS",
    "ActionAdapterConfig",
    "ActionNormalizer",
    "DiTActionAdapter",
    "adapter_paper",
    "adapter_small",
    "adapter_tiny",
    "pad_masked_actions",
]
