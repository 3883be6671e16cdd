"""The latent space of eq. (2): the map between frames and the latents the denoiser works on.

- `SpaceToDepthLatents` (compact backend): folds each f x f pixel block into channels, 64x64x3 -> 16x16x48.
  We chose this fixed, lossless map over a learnt small VAE for the CPU default because (a) it decodes exactly,
  so the decoded-pixel MSE we report is the dynamics model's error alone, whereas a VAE trained for minutes on
  this CPU has a reconstruction floor on the thin Meta-World arm of the same order as the frame-to-frame change
  that separates a forward model from copying the current frame; (b) it needs no separate training stage or
  frozen-encoder checkpoint; (c) the denoiser still sees a coarse 16x16 grid, which is what keeps it fast.
- `SVDLatents` (svd backend): diffusers' `AutoencoderKLTemporalDecoder`, frozen, used as SVD uses it: the
  conditioning frame is encoded unscaled (`latent_dist.mode()`), the diffused latents are scaled by
  `scaling_factor`, and decoding is temporal over the predicted frames.
Images enter and leave as float in [-1, 1], layout [N, 3, H, W]; latents are [N, C, h, w].
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class SpaceToDepthLatents(nn.Module):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def encode_condition(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(images, "n c (h p) (w q) -> n (c p q) h w", p=self.factor, q=self.factor)

    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_condition(images)

    def decode(self, latents_nf: torch.Tensor, num_frames: int) -> torch.Tensor:
        return rearrange(latents_nf, "n (c p q) h w -> n c (h p) (w q)", p=self.factor, q=self.factor)


class SVDLatents(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.requires_grad_(False)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_condition(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mode()

    @torch.no_grad()
    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        # the posterior mean, as when SVD's training latents are precomputed
        return self.vae.encode(images).latent_dist.mode() * self.scaling_factor

    def decode(self, latents_nf: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latents [(n f), C, h, w] (scaled) -> frames [(n f), 3, H, W]; decoded `num_frames` at a time."""
        return self.vae.decode(latents_nf / self.scaling_factor, num_frames=num_frames).sample
