"""The Diffusion-Transformer action adapter: `configuration` (config + presets), `modeling` (the denoiser and its
training loss), `sampler` (the 10-step sampling loop)."""

from defi.models.adapter.configuration import ActionAdapterConfig
from defi.models.adapter.modeling import DiTActionAdapter, pad_masked_actions
from defi.models.adapter.sampler import make_sampler, sample_actions

__all__ = ["ActionAdapterConfig", "DiTActionAdapter", "make_sampler", "pad_masked_actions", "sample_actions"]
