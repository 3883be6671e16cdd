"""GFDM: the General Forward Dynamics Model (instruction-conditioned latent video diffusion) and its Video Former."""

from defi.models.forward.config import PRESETS, ForwardDynamicsConfig
from defi.models.forward.model import ForwardDynamicsModel, build_forward_model, load_svd_weights
from defi.models.forward.video_former import VideoFormer, VideoFormerConfig

__all__ = [
    "PRESETS",
    "ForwardDynamicsConfig",
    "ForwardDynamicsModel",
    "VideoFormer",
    "VideoFormerConfig",
    "build_forward_model",
    "load_svd_weights",
]
