"""Configuration of the image-conditioned diffusion-policy baseline and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from defi.config import preset, replace, validate_config
from defi.models.adapter import ActionAdapterConfig
from defi.models.encoders import TextEncoderConfig
from defi.policies.base import NormalizationMode, PolicyConfig
from defi.policies.image_dp.image_encoder import ImageEncoderConfig


@dataclass
class ImageDPConfig(PolicyConfig):
    type_name: ClassVar[str] = "image_dp"
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    instruction_dim: int = 384
    """Width of the pooled instruction embedding (MiniLM 384; CLIP ViT-B text 512)."""
    action_normalization: NormalizationMode = "min_max"
    state_normalization: NormalizationMode = "min_max"
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    adapter: ActionAdapterConfig = field(default_factory=lambda: ActionAdapterConfig.preset("small"))
    """cond_dim / num_cond_tokens / global_cond_dim follow from the fields above: leave them null."""

    def validate(self) -> None:
        super().validate()
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")
        self.check(self.instruction_dim >= 1, "instruction_dim", ">= 1")
        self.check(self.action_dim == self.adapter.action_dim, "action_dim", f"adapter.action_dim ({self.adapter.action_dim})")
        self.check(self.action_horizon == self.adapter.action_horizon, "action_horizon",
                   f"adapter.action_horizon ({self.adapter.action_horizon})")

    def adapter_interface(self) -> dict[str, int]:
        return {"cond_dim": self.encoder.out_dim, "num_cond_tokens": len(self.cameras) * self.encoder.tokens_per_view,
                "global_cond_dim": self.instruction_dim + self.state_dim}


def _config(adapter: ActionAdapterConfig, **fields) -> ImageDPConfig:
    cfg = ImageDPConfig(adapter=adapter, action_dim=adapter.action_dim, action_horizon=adapter.action_horizon, **fields)
    validate_config(cfg)
    return cfg


@preset(ImageDPConfig, "tiny")
def _tiny() -> ImageDPConfig:
    return _config(replace(ActionAdapterConfig.preset("tiny"), action_horizon=4), image_size=32,
                   encoder=ImageEncoderConfig(channels=(8, 16), token_grid=2, random_shift=2))


@preset(ImageDPConfig, "small")
def _small() -> ImageDPConfig:
    return _config(replace(ActionAdapterConfig.preset("small"), action_horizon=8))


@preset(ImageDPConfig, "paper")
def _paper() -> ImageDPConfig:
    """Paper-sized adapter (384 x 12, 7-dim actions) on 256 px frames of both views, ResNet-18-like encoder."""
    return _config(ActionAdapterConfig.preset("paper"), cameras=("static", "gripper"), image_size=256, state_dim=0,
                   instruction_dim=512, text=TextEncoderConfig(kind="clip", name_or_path="openai/clip-vit-base-patch32"),
                   encoder=ImageEncoderConfig(channels=(64, 128, 256, 512), blocks_per_stage=2, token_grid=4,
                                              random_shift=16))
