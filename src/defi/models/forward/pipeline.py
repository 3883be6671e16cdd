"""Sampling from the GFDM: the multi-step sampler and the one-step estimate the policy reads (paper §3.1, Q3, Q8).

The model (`modeling.py`) only denoises; these functions run it. The x0 estimate of a single step is the diffusers
scheduler's `pred_original_sample` (a DDIM step, deterministic), not a hand-written formula per prediction type.
`one_step` is not wrapped in `no_grad`: the coupled policy calls it with gradients when Table 9's GFDM+adapter and
all-train rows finetune the GFDM, and under `no_grad` otherwise.
"""

from __future__ import annotations

import torch
from einops import rearrange

from defi.errors import ConfigError
from defi.models.forward.modeling import ForwardDynamicsModel, make_scheduler


def _one_step_scheduler(model: ForwardDynamicsModel):
    """A DDIM scheduler set up for one step, kept on the model (a plain attribute: not saved, shared by copies)."""
    scheduler = model.__dict__.get("_one_step_scheduler")
    if scheduler is None:
        scheduler = make_scheduler(model.config, "ddim")
        scheduler.set_timesteps(1)
        model.__dict__["_one_step_scheduler"] = scheduler
    return scheduler


def one_step(model: ForwardDynamicsModel, images: torch.Tensor, instruction, layers: tuple[str, ...] | None = None,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """ONE denoising step from noise: the denoiser's block outputs, each [n f C h w] (views folded into n, in the
    order `b v`), plus "latents": the one-step estimate of z^(0) [n f C h' w'].

    `images`: [n 3 H W] or [b v 3 H W] (uint8 or float in [-1, 1]); `instruction`: strings, a `TextEmbedding` or
    tokens [b, L, text_dim].
    """
    cfg = model.config
    layers = tuple(cfg.features.layers if layers is None else layers)
    _, condition, context, _ = model.prepare(images, instruction)
    n = condition.shape[0]
    t_index = model.one_step_timestep
    timesteps = torch.full((n,), t_index, device=condition.device, dtype=torch.long)
    shape = (n, cfg.num_frames, cfg.latent_channels, *condition.shape[-2:])
    if generator is None:
        # One seeded draw shared by every sample, not one per batch position: a clip's features then do not
        # depend on where it sits in a batch, so features computed once per clip (finetuning's feature cache) or
        # in a training batch equal those `act` computes at batch 1.
        generator = torch.Generator(device=condition.device).manual_seed(cfg.features.seed)
        noise = torch.randn((1, *shape[1:]), generator=generator, device=condition.device).expand(shape)
    else:
        noise = torch.randn(shape, generator=generator, device=condition.device)
    noisy = model.noise_scheduler.add_noise(torch.zeros_like(noise), noise, timesteps)

    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        try:
            module = model.unet.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"config key features.layers: the UNet has no block {name!r}") from None

        def hook(_module, _inputs, output, name=name):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[name] = rearrange(hidden, "(n f) c h w -> n f c h w", n=n)

        handles.append(module.register_forward_hook(hook))
    try:
        prediction = model.denoise(noisy, timesteps, condition, context)
    finally:
        for handle in handles:
            handle.remove()
    estimate = _one_step_scheduler(model).step(prediction, t_index, noisy).pred_original_sample
    return {**{name: captured[name] for name in layers}, "latents": estimate}


@torch.no_grad()
def predict_one_step(model: ForwardDynamicsModel, images: torch.Tensor, instruction,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The decoded one-step estimate of the future (paper Q8, Fig. 9): frames [b v f 3 H W] (or [n f 3 H W])."""
    current, views = model._fold_views(images)
    latents = one_step(model, images, instruction, layers=(), generator=generator)["latents"]
    frames = model.decode_latents(latents, current)
    return frames if images.ndim == 4 else rearrange(frames, "(b v) f c h w -> b v f c h w", v=views)


@torch.no_grad()
def sample_future(model: ForwardDynamicsModel, images: torch.Tensor, instruction, num_steps: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-step sampling (the configured DDIM/Euler/DDPM scheduler) -> futures float [b v f 3 H W] in [-1, 1]
    (or [n f 3 H W] when `images` is [n 3 H W])."""
    cfg = model.config
    folded_in = images.ndim == 4
    current, condition, context, views = model.prepare(images, instruction)
    scheduler = make_scheduler(cfg, cfg.noise.sampler)
    scheduler.set_timesteps(num_steps or cfg.noise.sample_steps, device=current.device)
    shape = (current.shape[0], cfg.num_frames, cfg.latent_channels, *condition.shape[-2:])
    latents = torch.randn(shape, generator=generator, device=current.device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        prediction = model.denoise(model_input, t.expand(shape[0]).to(current.device), condition, context)
        latents = scheduler.step(prediction, t, latents, generator=generator).prev_sample
    frames = model.decode_latents(latents, current)
    return frames if folded_in else rearrange(frames, "(b v) f c h w -> b v f c h w", v=views)
