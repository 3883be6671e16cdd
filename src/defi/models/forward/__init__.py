"""GFDM: the General Forward Dynamics Model (instruction-conditioned latent video diffusion) and its Video Former.

`configuration` (config + presets), `modeling` (the denoiser and its training loss), `pipeline` (the multi-step
sampler and the one-step features), `fast_one_step` (the one-step features for inference, constants computed
once), `latent` (frames <-> latents), `video_former`.
"""

from defi.models.forward.configuration import ForwardDynamicsConfig
from defi.models.forward.fast_one_step import FastOneStep, fast_one_step
from defi.models.forward.modeling import (
    ForwardDynamicsModel,
    build_forward_model,
    load_svd_weights,
    to_uint8,
    to_unit_range,
)
from defi.models.forward.pipeline import one_step, predict_one_step, sample_future
from defi.models.forward.video_former import VideoFormer, VideoFormerConfig, video_former_config

__all__ = [
    "ForwardDynamicsConfig",
    "FastOneStep",
    "ForwardDynamicsModel",
    "VideoFormer",
    "VideoFormerConfig",
    "build_forward_model",
    "fast_one_step",
    "load_svd_weights",
    "one_step",
    "predict_one_step",
    "sample_future",
    "to_uint8",
    "to_unit_range",
    "video_former_config",
]
