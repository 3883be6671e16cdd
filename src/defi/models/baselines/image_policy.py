"""The plain image-conditioned diffusion-policy baseline (issue 6): no forward or inverse dynamics model.

The current frame of each camera view goes through a small conv encoder (image_encoder.py) into condition
tokens; the same DiT action adapter as DeFI's policy denoises the action chunk, with the instruction embedding
(plus the normalised proprio state when `state_dim > 0`) as its global condition. Comparing it with DeFIPolicy
isolates what the pretrained GFDM/GIDM add.

Trainer contract: `model(batch) -> {"loss": scalar}` where batch holds the data layer's clip tensors
("images" uint8 [B, V, 3, h, w], "actions" [B, Ha, A] in dataset units, "action_mask" [B, Ha], "state" [B, S])
plus "instruction_embedding" [B, Dg], a pooled text embedding the caller precomputes (e.g. the frozen MiniLM).
Call `set_normalization(action_stats, state_stats)` once before training; the statistics are saved with the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from defi.config import Config, validate_config
from defi.errors import ConfigError
from defi.models.adapter import (
    ActionAdapterConfig,
    ActionNormalizer,
    DiTActionAdapter,
    adapter_paper,
    adapter_small,
    adapter_tiny,
)
from defi.models.base import PretrainedMixin
from defi.models.baselines.image_encoder import ConvImageEncoder, ImageEncoderConfig

REQUIRED_BATCH_KEYS = ("images", "actions", "action_mask", "instruction_embedding")


@dataclass
class ImageDiffusionPolicyConfig(Config):
    num_views: int = 2  # Meta-World: corner (static) and gripperPOV (wrist)
    image_size: int = 64
    instruction_dim: int = 384  # the pooled MiniLM embedding; 512 for CLIP ViT-B text
    state_dim: int = 0  # > 0: the proprio state is normalised and concatenated to the instruction embedding
    action_normalization: Literal["min_max", "mean_std"] = "min_max"
    state_normalization: Literal["min_max", "mean_std"] = "min_max"
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    # The adapter's interface fields (cond_dim, num_cond_tokens, global_cond_dim) follow from the fields above;
    # leave them null.
    adapter: ActionAdapterConfig = field(default_factory=adapter_small)

    def adapter_interface(self) -> dict[str, int]:
        return {
            "cond_dim": self.encoder.out_dim,
            "num_cond_tokens": self.num_views * self.encoder.tokens_per_view,
            "global_cond_dim": self.instruction_dim + self.state_dim,
        }

    def validate(self) -> None:
        self.check(self.num_views >= 1, "num_views", "an integer >= 1")
        self.check(self.image_size >= 8, "image_size", "an integer >= 8")
        self.check(self.instruction_dim >= 1, "instruction_dim", "an integer >= 1")
        self.check(self.state_dim >= 0, "state_dim", "an integer >= 0")
        for key, value in self.adapter_interface().items():
            current = getattr(self.adapter, key)
            if current is not None and current != value:
                raise ConfigError(f"adapter.{key}={current!r}: expected {value} (follows from the encoder, views, "
                                  "instruction_dim and state_dim) or null")


def image_policy_tiny() -> ImageDiffusionPolicyConfig:
    return ImageDiffusionPolicyConfig(
        image_size=32, instruction_dim=16,
        encoder=ImageEncoderConfig(channels=(8, 16), token_grid=2, random_shift=2), adapter=adapter_tiny(),
    )


def image_policy_small() -> ImageDiffusionPolicyConfig:
    return ImageDiffusionPolicyConfig()


def image_policy_paper() -> ImageDiffusionPolicyConfig:
    """Paper-sized adapter (384 x 12, 7-dim actions) on 256 px frames with a ResNet-18-like encoder."""
    return ImageDiffusionPolicyConfig(
        image_size=256, instruction_dim=512,
        encoder=ImageEncoderConfig(channels=(64, 128, 256, 512), blocks_per_stage=2, token_grid=4, random_shift=16),
        adapter=adapter_paper(),
    )


IMAGE_POLICY_PRESETS = {"tiny": image_policy_tiny, "small": image_policy_small, "paper": image_policy_paper}


class ImageDiffusionPolicyModel(nn.Module, PretrainedMixin):
    config_class = ImageDiffusionPolicyConfig

    def __init__(self, config: ImageDiffusionPolicyConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        self.encoder = ConvImageEncoder(config.encoder)
        self.adapter = DiTActionAdapter(config.adapter.with_interface(**config.adapter_interface()))
        self.action_normalizer = ActionNormalizer(config.adapter.action_dim, config.action_normalization)
        self.state_normalizer = (
            ActionNormalizer(config.state_dim, config.state_normalization) if config.state_dim > 0 else None
        )

    def set_normalization(self, action_stats: Mapping[str, Any], state_stats: Mapping[str, Any] | None = None) -> None:
        """Dataset statistics ({"mean", "std", "min", "max"}, each [dim]) for actions and, if used, the state."""
        self.action_normalizer.set_stats(action_stats)
        if self.state_normalizer is not None:
            if state_stats is None:
                raise ConfigError(f"state_dim={self.config.state_dim}: normalization stats for the state are needed")
            self.state_normalizer.set_stats(state_stats)

    # ---- conditioning -------------------------------------------------------------------------------------
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 frames [B, V, 3, h, w] -> condition tokens [B, V * token_grid**2, C]."""
        cfg = self.config
        size = cfg.image_size
        if images.dtype != torch.uint8:
            raise ConfigError(f"images have dtype {images.dtype}: expected uint8 [B, V, 3, h, w]")
        if images.dim() != 5 or tuple(images.shape[1:]) != (cfg.num_views, 3, size, size):
            raise ConfigError(f"images have shape {list(images.shape)}: expected [B, {cfg.num_views}, 3, {size}, "
                              f"{size}] (config keys num_views, image_size)")
        batch = images.shape[0]
        frames = images.flatten(0, 1).float() / 127.5 - 1.0  # [B*V, 3, h, w] in [-1, 1]
        tokens = self.encoder(frames, generator)  # [B*V, T, C]
        # which view and grid cell a token comes from is told by the adapter's per-slot condition embedding
        return tokens.reshape(batch, cfg.num_views * tokens.shape[1], tokens.shape[2])

    def global_condition(self, instruction_embedding: Tensor, state: Tensor | None) -> Tensor:
        """[B, Dg] instruction embedding (+ normalised state [B, S]) -> [B, Dg + S]."""
        cfg = self.config
        if instruction_embedding.dim() != 2 or instruction_embedding.shape[1] != cfg.instruction_dim:
            raise ConfigError(f"instruction_embedding has shape {list(instruction_embedding.shape)}: expected "
                              f"[B, {cfg.instruction_dim}] (config key instruction_dim)")
        if self.state_normalizer is None:
            return instruction_embedding.float()
        if state is None or state.dim() != 2 or state.shape[1] != cfg.state_dim:
            shape = None if state is None else list(state.shape)
            raise ConfigError(f"state has shape {shape}: expected [B, {cfg.state_dim}] (config key state_dim)")
        return torch.cat([instruction_embedding.float(), self.state_normalizer.normalize(state.float())], dim=-1)

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, images: Tensor, actions: Tensor, action_mask: Tensor, instruction_embedding: Tensor,
             state: Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Denoising loss on a batch; `actions` in dataset units (normalised here). Returns {"loss": scalar}."""
        cond_tokens = self.encode_images(images, generator)
        global_cond = self.global_condition(instruction_embedding, state)
        target = self.action_normalizer.normalize(actions.float())
        return self.adapter.loss(target, action_mask, cond_tokens, global_cond, generator=generator)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Trainer entry point: a collated clip batch plus "instruction_embedding" -> {"loss": scalar}."""
        missing = [key for key in REQUIRED_BATCH_KEYS if key not in batch]
        if missing:
            raise ConfigError(f"batch lacks {missing}: expected keys {list(REQUIRED_BATCH_KEYS)} (+ 'state')")
        state = batch.get("state") if self.state_normalizer is not None else None
        return self.loss(batch["images"], batch["actions"], batch["action_mask"], batch["instruction_embedding"], state)

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, images: Tensor, instruction_embedding: Tensor, state: Tensor | None = None,
               generator: torch.Generator | None = None, num_steps: int | None = None) -> Tensor:
        """An action chunk [B, Ha, A] in dataset units (unnormalised). Call `.eval()` first (no augmentation)."""
        cond_tokens = self.encode_images(images)
        global_cond = self.global_condition(instruction_embedding, state)
        chunk = self.adapter.sample(cond_tokens, global_cond, generator=generator, num_steps=num_steps)
        return self.action_normalizer.unnormalize(chunk)
