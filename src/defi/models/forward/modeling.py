"""The General Forward Dynamics Model (GFDM, paper §3.1): instruction-conditioned latent video diffusion.

Given the current frame o_t and an instruction, it denoises the latents of the next `num_frames` frames
(eq. 1-3). Conditioning follows SVD: the current frame's latent is concatenated to every noisy frame latent along
channels, and the instruction's text-encoder tokens (projected to the UNet's width) fill the cross-attention slot
where SVD puts its CLIP image embedding. Several camera views are predicted independently: views are folded into
the batch. At policy time the model is frozen and run for ONE denoising step (`pipeline.one_step`).

This module only denoises (and computes the training loss); sampling a future and the one-step features live
in `pipeline.py`, as diffusers separates models from pipelines.

Layouts: clip images are uint8 `b v c h w`; futures `b v f c h w`; inside, views are folded (`n = b*v`) and
latents are `n f c h w`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    UNetSpatioTemporalConditionModel,
)
from einops import rearrange, repeat
from torch import nn

from defi.config import validate_config
from defi.errors import CheckpointError, ConfigError, ShapeError
from defi.models.base import PretrainedMixin
from defi.models.encoders import shared_encoder
from defi.models.encoders.text import TextEmbedding, TextEncoder
from defi.models.forward.configuration import ForwardDynamicsConfig
from defi.models.forward.latent import SpaceToDepthLatents, SVDLatents
from defi.models.layers import training_target


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or float already in [-1, 1]) -> float [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


class ForwardDynamicsModel(PretrainedMixin, nn.Module):
    config_class = ForwardDynamicsConfig

    def __init__(self, config: ForwardDynamicsConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        u = config.unet
        channels = config.latent_channels
        self.unet = UNetSpatioTemporalConditionModel(
            sample_size=config.latent_side,
            in_channels=2 * channels,  # [noisy future latents, current-frame latent], as SVD
            out_channels=channels,
            down_block_types=tuple(u.down_block_types),
            up_block_types=tuple(u.up_block_types),
            block_out_channels=tuple(u.block_out_channels),
            addition_time_embed_dim=u.addition_time_embed_dim,
            projection_class_embeddings_input_dim=3 * u.addition_time_embed_dim,
            layers_per_block=u.layers_per_block,
            cross_attention_dim=u.cross_attention_dim,
            transformer_layers_per_block=u.transformer_layers_per_block,
            num_attention_heads=tuple(u.num_attention_heads),
            num_frames=config.num_frames,
        )
        if config.backend == "compact":
            self.latents = SpaceToDepthLatents(config.latent_downsample)
        else:
            v = config.vae
            self.latents = SVDLatents(
                AutoencoderKLTemporalDecoder(
                    in_channels=3,
                    out_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * len(v.block_out_channels),
                    block_out_channels=tuple(v.block_out_channels),
                    layers_per_block=v.layers_per_block,
                    latent_channels=v.latent_channels,
                    sample_size=config.image_size,
                    scaling_factor=v.scaling_factor,
                )
            )
        self.text_dim = config.text_dim
        # SVD's cross-attention expects its image embedding width; a learnt projection maps text tokens there
        self.text_proj = nn.Linear(self.text_dim, u.cross_attention_dim)
        self.noise_scheduler = make_scheduler(config, "ddpm")

    # ---------------------------------------------------------------- instructions
    def text_encoder(self) -> TextEncoder:
        """The frozen text encoder of the config: the process's shared instance (never saved with the GFDM)."""
        encoder = shared_encoder(self.config.text_encoder, self.text_proj.weight.device)
        if encoder.dim != self.text_dim:
            raise ConfigError(
                f"config key text_dim={self.text_dim}: the text encoder {self.config.text_encoder.kind!r} "
                f"gives {encoder.dim}-wide tokens; set text_dim to {encoder.dim}"
            )
        return encoder

    def instruction_tokens(self, instruction: TextEmbedding | torch.Tensor | list[str] | tuple[str, ...]) -> torch.Tensor:
        """Instructions (strings, a `TextEmbedding`, or tokens [B, L, text_dim]) -> cross-attention context [B, L, D]."""
        device = self.text_proj.weight.device
        if isinstance(instruction, (list, tuple)) and (not instruction or isinstance(instruction[0], str)):
            instruction = self.text_encoder().encode(list(instruction))
        tokens = instruction.tokens if isinstance(instruction, TextEmbedding) else instruction
        if tokens.ndim != 3 or tokens.shape[-1] != self.text_dim:
            raise ShapeError(f"instruction tokens: expected [B, L, {self.text_dim}], got {list(tokens.shape)}")
        return self.text_proj(tokens.to(device=device, dtype=self.text_proj.weight.dtype))

    # ---------------------------------------------------------------- latents
    def _fold_views(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[b v c h w] or [n c h w] -> float [n c h w] in [-1, 1], and the number of views (1 if unfolded)."""
        if images.ndim == 5:
            views = images.shape[1]
            images = rearrange(images, "b v c h w -> (b v) c h w")
        elif images.ndim == 4:
            views = 1
        else:
            raise ShapeError(f"images: expected [B, V, 3, H, W] or [N, 3, H, W], got {list(images.shape)}")
        size = self.config.image_size
        if images.shape[-3:] != (3, size, size):
            raise ShapeError(f"images: expected 3x{size}x{size} frames (config image_size), got "
                             f"{list(images.shape[-3:])}")
        return to_unit_range(images), views

    def target_latents(self, current: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """current [n c h w], future [n f c h w] (float, [-1, 1]) -> the diffused latents z^(0) [n f C h' w']."""
        n, f = future.shape[:2]
        z = self.latents.encode_target(rearrange(future, "n f c h w -> (n f) c h w"))
        z = rearrange(z, "(n f) c h w -> n f c h w", n=n, f=f)
        if self.config.target == "residual":
            z = z - self.latents.encode_target(current).unsqueeze(1)
        return z * self.config.latent_scale

    def decode_latents(self, latents: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Diffused latents [n f C h' w'] (+ current frames [n c h w]) -> frames float [n f 3 H W] in [-1, 1]."""
        n, f = latents.shape[:2]
        z = latents / self.config.latent_scale
        if self.config.target == "residual":
            z = z + self.latents.encode_target(current).unsqueeze(1)
        frames = self.latents.decode(rearrange(z, "n f c h w -> (n f) c h w"), num_frames=f)
        return rearrange(frames, "(n f) c h w -> n f c h w", n=n, f=f).clamp(-1.0, 1.0)

    # ---------------------------------------------------------------- denoiser
    def denoise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """One UNet call: noisy [n f C h w], timesteps [n], current latent [n C h w], context [n L D] -> [n f C h w]."""
        n, f = noisy.shape[:2]
        sample = torch.cat([noisy, repeat(condition, "n c h w -> n f c h w", f=f)], dim=2)
        added = torch.tensor(self.config.added_time_ids, device=noisy.device, dtype=noisy.dtype).expand(n, 3)
        return self.unet(sample, timesteps, encoder_hidden_states=context, added_time_ids=added).sample

    def prepare(self, images: torch.Tensor, instruction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Condition inputs: (current frames [n 3 H W] in [-1, 1], current latent [n C h w], text context
        [n L D], number of views), views folded into n."""
        current, views = self._fold_views(images)
        context = self.instruction_tokens(instruction)
        if context.shape[0] * views != current.shape[0]:
            raise ShapeError(f"{context.shape[0]} instructions for {current.shape[0] // views} clips")
        context = repeat(context, "b l d -> (b v) l d", v=views)
        return current, self.latents.encode_condition(current), context, views

    # ---------------------------------------------------------------- training, eq. (3)
    def diffusion_loss(
        self,
        images: torch.Tensor,
        future_images: torch.Tensor,
        instruction,
        future_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """images uint8 [b v 3 H W], future_images uint8 [b v f 3 H W], future_mask bool [b f] -> {"loss": ...}."""
        current, condition, context, views = self.prepare(images, instruction)
        if future_images.ndim != 6 or future_images.shape[2] != self.config.num_frames:
            raise ShapeError(
                f"future_images: expected [B, V, {self.config.num_frames}, 3, H, W], got {list(future_images.shape)}"
            )
        future = to_unit_range(rearrange(future_images, "b v f c h w -> (b v) f c h w"))
        target = self.target_latents(current, future)
        n = target.shape[0]
        device = target.device
        noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
        timesteps = torch.randint(
            0, self.config.noise.num_train_timesteps, (n,), generator=generator, device=device
        )
        if self.config.noise.one_step_fraction > 0:
            one_step = torch.rand((n,), generator=generator, device=device) < self.config.noise.one_step_fraction
            timesteps = torch.where(one_step, torch.full_like(timesteps, self.one_step_timestep), timesteps)
        noisy = self.noise_scheduler.add_noise(target, noise, timesteps)
        prediction = self.denoise(noisy, timesteps, condition, context)
        goal = training_target(self.noise_scheduler, self.config.noise.prediction_type, target, noise, timesteps)
        per_frame = F.mse_loss(prediction.float(), goal.float(), reduction="none").mean(dim=(2, 3, 4))  # [n f]
        if future_mask is None:
            weight = torch.ones_like(per_frame)
        else:
            weight = repeat(future_mask.to(per_frame.dtype), "b f -> (b v) f", v=views)
        loss = (per_frame * weight).sum() / weight.sum().clamp(min=1.0)
        return {"loss": loss, "valid_future_frames": weight.sum().detach() / max(n // views, 1)}

    @property
    def one_step_timestep(self) -> int:
        """The diffusion timestep at which the one-step features are read (the noisiest by default)."""
        t = self.config.features.timestep
        return self.config.noise.num_train_timesteps - 1 if t == -1 else t

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The trainer's contract: a clip batch (see defi.data) -> {"loss": scalar, ...}."""
        instruction = batch["instruction_tokens"] if "instruction_tokens" in batch else list(batch["instruction"])
        return self.diffusion_loss(
            batch["images"], batch["future_images"], instruction, batch.get("future_mask")
        )


def make_scheduler(config: ForwardDynamicsConfig, kind: str):
    """diffusers scheduler for training noise (`ddpm`) or sampling (`ddim`, `euler`, `ddpm`) from one noise config."""
    n = config.noise
    common = dict(
        num_train_timesteps=n.num_train_timesteps,
        beta_start=n.beta_start,
        beta_end=n.beta_end,
        beta_schedule=n.beta_schedule,
        prediction_type=n.prediction_type,
        rescale_betas_zero_snr=n.zero_terminal_snr,
    )
    if kind == "ddpm":
        return DDPMScheduler(**common, clip_sample=False)
    if kind == "ddim":
        # "trailing" spacing starts sampling at the noisiest training step, where one-step features are read
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if kind == "euler":
        return EulerDiscreteScheduler(**common, timestep_spacing="trailing")
    raise ConfigError(f"config key noise.sampler={kind!r}: expected ddim, euler or ddpm")


def build_forward_model(config: ForwardDynamicsConfig, device: str | torch.device = "cpu") -> ForwardDynamicsModel:
    """Build the GFDM from its config; for the svd backend with `pretrained` set, load SVD's unet and vae weights."""
    model = ForwardDynamicsModel(config)
    if config.backend == "svd" and config.pretrained:
        load_svd_weights(model, config.pretrained)
    return model.to(device)


def load_svd_weights(model: ForwardDynamicsModel, name_or_path: str) -> None:
    """Copy pretrained Stable Video Diffusion weights (diffusers layout: unet/, vae/) into `model`, offline only.

    `name_or_path` is a local directory or a hub repo id already in the Hugging Face cache. The architecture in the
    model's config must match the checkpoint's (the `paper` preset matches stable-video-diffusion-img2vid-xt).
    """
    from pathlib import Path

    if Path(name_or_path).expanduser().exists():
        name_or_path = str(Path(name_or_path).expanduser())
    parts = {"unet": (UNetSpatioTemporalConditionModel, model.unet), "vae": (AutoencoderKLTemporalDecoder, model.latents.vae)}
    for subfolder, (cls, target) in parts.items():
        try:
            loaded = cls.from_pretrained(name_or_path, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as err:
            raise CheckpointError(
                f"pretrained SVD {subfolder!r} weights not found offline at {name_or_path!r} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Expected a local directory with "
                f"{subfolder}/config.json and {subfolder}/diffusion_pytorch_model.safetensors (the layout of "
                f"stabilityai/stable-video-diffusion-img2vid-xt), or that repo in the Hugging Face hub cache "
                f"(`hf download stabilityai/stable-video-diffusion-img2vid-xt` on a machine with internet); "
                f"or set pretrained='' to start from random weights"
            ) from None
        source, own = loaded.state_dict(), target.state_dict()
        missing = sorted(set(own) - set(source))
        unexpected = sorted(set(source) - set(own))
        mismatched = sorted(k for k in set(own) & set(source) if own[k].shape != source[k].shape)
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"pretrained SVD {subfolder!r} at {name_or_path!r} does not match config key {subfolder}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {mismatched[:3]}"
            )
        target.load_state_dict(source)
        del loaded, source
