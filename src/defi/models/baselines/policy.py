"""The image-conditioned diffusion-policy baseline behind the Policy API (no forward or inverse dynamics model).

Wraps `ImageDiffusionPolicyModel` with the frozen instruction encoder it needs, so that the same trainer,
evaluation and server drive it exactly like `DeFIPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from defi.config import Config, validate_config
from defi.models.base import PretrainedMixin
from defi.models.baselines.image_policy import ImageDiffusionPolicyConfig, ImageDiffusionPolicyModel
from defi.models.encoders.text import TextEncoder, TextEncoderConfig, build_text_encoder


@dataclass
class ImageDPPolicyConfig(Config):
    cameras: tuple[str, ...] = ("corner",)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: ImageDiffusionPolicyConfig = field(default_factory=ImageDiffusionPolicyConfig)

    def validate(self) -> None:
        self.check(len(self.cameras) == self.model.num_views, "cameras", f"{self.model.num_views} cameras (model.num_views)")


class ImageDPPolicy(PretrainedMixin, nn.Module):
    config_class: ClassVar[type] = ImageDPPolicyConfig

    def __init__(self, config: ImageDPPolicyConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        self.model = ImageDiffusionPolicyModel(config.model)
        self._text: list[TextEncoder] = []  # frozen, outside the module tree: never saved or optimised

    def set_normalization(self, action_stats: Mapping[str, Any], state_stats: Mapping[str, Any] | None = None) -> None:
        self.model.set_normalization(action_stats, state_stats)

    def instruction_embedding(self, instructions: Sequence[str], device: torch.device) -> torch.Tensor:
        if not self._text:
            self._text.append(build_text_encoder(self.config.text))
        encoder = self._text[0]
        if next(encoder.model.parameters()).device != device:
            encoder.to(device)
        return encoder.encode(list(instructions)).pooled.to(device)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = batch["images"].device
        return self.model({**batch, "instruction_embedding": self.instruction_embedding(batch["instruction"], device)})

    @property
    def metadata(self) -> dict[str, Any]:
        m = self.config.model
        return {"policy_type": "image_dp", "cameras": list(self.config.cameras), "image_size": m.image_size,
                "action_dim": m.adapter.action_dim, "action_horizon": m.adapter.action_horizon,
                "state_dim": m.state_dim, "sampling_steps": m.adapter.num_sampling_steps}

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        from defi.models.policy import observation_to_tensors

        device = next(self.parameters()).device
        m = self.config.model
        images, state = observation_to_tensors(observation, self.config.cameras, m.image_size, m.state_dim, device)
        self.eval()
        emb = self.instruction_embedding([instruction], device)
        return self.model.sample(images, emb, state)[0].float().cpu().numpy()
