"""The image-conditioned diffusion-policy baseline: no forward or inverse dynamics model.

The current frame of each camera goes through a small conv encoder (`image_encoder.py`) into condition tokens;
the same DiT action adapter as DeFI's policy denoises the action chunk, with the instruction embedding (plus the
normalised proprio state when `state_dim > 0`) as its global condition. Comparing it with the DeFI policy
isolates what the pretrained GFDM/GIDM add.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from defi.config import validate_config
from defi.errors import ShapeError, check_shape
from defi.models.adapter import DiTActionAdapter, sample_actions
from defi.models.base import PretrainedMixin
from defi.models.encoders import shared_encoder
from defi.models.traced import TracedCall, inference_cache
from defi.policies.base import Normalizer, PolicyMetadata, TorchPolicyMixin
from defi.policies.image_dp.configuration_image_dp import ImageDPConfig
from defi.policies.image_dp.image_encoder import ConvImageEncoder


class ImageDPPolicy(TorchPolicyMixin, PretrainedMixin, nn.Module):
    config_class: ClassVar[type] = ImageDPConfig
    # in eval mode without gradients the encoder and the denoiser run as traced graphs (`defi.models.traced`: the
    # same actions up to float rounding, without Python between the operations); benchmarks switch it off
    traced_inference: bool = True
    # The adapter's sampler and step count at inference when not the config's (None). These CHANGE the actions:
    # to evaluate a cheaper sampler with a trained policy, set them on the loaded policy (or a fork), e.g.
    # `policy.sampler, policy.sampling_steps = "dpm_solver", 5`.
    sampler: str | None = None
    sampling_steps: int | None = None

    def __init__(self, config: ImageDPConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        self.encoder = ConvImageEncoder(config.encoder)
        self.adapter = DiTActionAdapter(config.adapter.with_interface(**config.adapter_interface()))
        fields = {"action": (config.action_dim, config.action_normalization)}
        if config.state_dim:
            fields["observation.state"] = (config.state_dim, config.state_normalization)
        self.normalizer = Normalizer(fields)
        inference_cache(self)  # made here, so that forks share it
        self._init_episode_state()

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 frames [B, V, 3, h, w] -> condition tokens [B, V * token_grid**2, C] (random shift in training)."""
        cfg = self.config
        if images.dtype != torch.uint8:
            raise ShapeError(f"images: expected uint8 [B, V, 3, h, w], got {images.dtype}")
        check_shape("images", images, ("B", len(cfg.cameras), 3, cfg.image_size, cfg.image_size),
                    f"cameras {list(cfg.cameras)}, config key image_size")
        if self._traced():
            return self._graph("encode_images", self._encode_images)(images)[0]
        return self._encode_images(images, generator)[0]

    def _encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor]:
        frames = images.flatten(0, 1).float() / 127.5 - 1.0  # [B*V, 3, h, w] in [-1, 1]
        tokens = self.encoder(frames, generator)  # [B*V, T, C]
        # which view and grid cell a token comes from is told by the adapter's per-slot condition embedding
        return (tokens.reshape(images.shape[0], -1, tokens.shape[2]),)

    def global_condition(self, instructions: Sequence[str], state: Tensor | None) -> Tensor:
        """The pooled instruction embedding (+ the normalised state) -> [B, instruction_dim + state_dim]."""
        device = self.adapter.action_pos.device
        pooled = shared_encoder(self.config.text, device).encode(list(instructions)).pooled
        check_shape("instruction embedding", pooled, ("B", self.config.instruction_dim), "config key instruction_dim")
        if not self.config.state_dim:
            return pooled
        if state is None:
            raise ShapeError(f"state: this policy needs a {self.config.state_dim}-dim proprio state")
        check_shape("state", state, (pooled.shape[0], self.config.state_dim), "config key state_dim")
        return torch.cat([pooled, self.normalizer.normalize("observation.state", state.float())], dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The trainer's contract on a clip batch: masked denoising loss of the normalised action chunk."""
        cond = self.encode_images(batch["images"])
        global_cond = self.global_condition(batch["instruction"], batch.get("state"))
        target = self.normalizer.normalize("action", batch["actions"].float())
        return self.adapter.loss(target, batch["action_mask"].bool(), cond, global_cond)

    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                             noise: Tensor | None = None) -> Tensor:
        cond = self.encode_images(batch["images"])
        global_cond = self.global_condition(batch["instruction"], batch.get("state"))
        chunk = sample_actions(self.adapter, cond, global_cond, generator=generator, noise=noise,
                               traced=self._traced(), sampler=self.sampler, num_steps=self.sampling_steps)
        return self.normalizer.unnormalize("action", chunk)

    def _steps(self) -> int:
        return self.sampling_steps or self.config.adapter.num_sampling_steps

    def _traced(self) -> bool:
        return self.traced_inference and not self.training and not torch.is_grad_enabled()

    def _graph(self, name: str, fn) -> TracedCall:
        """The policy's traced inference graph `name` (in the policy's `inference_cache`: not
        saved or copied, shared by forks)."""
        graphs = inference_cache(self)
        if name not in graphs:
            graphs[name] = TracedCall(self, fn)
        graphs[name].check()
        return graphs[name]

    @torch.no_grad()
    def timed_parts(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The steps of one `predict_action_chunk` call as separate callables, for `defi.eval.latency`."""
        cond = self.encode_images(batch["images"])
        global_cond = self.global_condition(batch["instruction"], batch.get("state"))
        return {"image encoder": lambda: self.encode_images(batch["images"]),
                f"adapter ({self._steps()}-step sampling)":
                    lambda: sample_actions(self.adapter, cond, global_cond, traced=self._traced(),
                                           sampler=self.sampler, num_steps=self.sampling_steps)}

    @property
    def metadata(self) -> PolicyMetadata:
        cfg = self.config
        return PolicyMetadata("image_dp", list(cfg.cameras), [cfg.image_size, cfg.image_size], cfg.state_dim,
                              cfg.action_dim, cfg.action_horizon, self._steps())
