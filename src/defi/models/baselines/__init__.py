"""Baselines trained with the same trainer as DeFI: a plain image-conditioned diffusion policy."""

from defi.models.baselines.image_encoder import ConvImageEncoder, ImageEncoderConfig, random_shift
from defi.models.baselines.image_policy import (
    IMAGE_POLICY_PRESETS,
    ImageDiffusionPolicyConfig,
    ImageDiffusionPolicyModel,
    image_policy_paper,
    image_policy_small,
    image_policy_tiny,
)

__all__ = [
    "IMAGE_POLICY_PRESETS",
    "ConvImageEncoder",
    "ImageDiffusionPolicyConfig",
    "ImageDiffusionPolicyModel",
    "ImageEncoderConfig",
    "image_policy_paper",
    "image_policy_small",
    "image_policy_tiny",
    "random_shift",
]
