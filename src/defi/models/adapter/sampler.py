"""The action adapter's sampler: pure noise -> an action chunk in `num_sampling_steps` (10) denoising steps.

The loop lives here, not in the model (diffusers' habit: models denoise, pipelines sample). The schedulers are
diffusers': DDIM (eta 0) or DPM-Solver++ (2nd order), both on a "trailing" timestep grid that starts at the last
training timestep (pure noise), as recommended for few-step sampling (Lin et al. 2024, "Common diffusion noise
schedules and sample steps are flawed").
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from defi.errors import ConfigError
from defi.models.adapter.configuration import ActionAdapterConfig
from defi.models.adapter.modeling import DiTActionAdapter
from defi.models.traced import TracedCall, inference_cache

SAMPLERS = ("ddim", "dpm_solver")


def make_sampler(config: ActionAdapterConfig, kind: str | None = None):
    """The diffusers scheduler of `kind` (default: the config's `sampler`) on the config's noise schedule."""
    kind = config.sampler if kind is None else kind
    if kind not in SAMPLERS:
        raise ConfigError(f"sampler {kind!r}: expected one of {', '.join(SAMPLERS)}")
    schedule = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                    prediction_type=config.prediction_type)
    if kind == "ddim":
        return DDIMScheduler(**schedule, clip_sample=config.clip_sample, clip_sample_range=config.clip_sample_range,
                             timestep_spacing="trailing")
    # With sample_max_value = the clip range, diffusers' "dynamic" thresholding reduces to clamping each
    # intermediate clean-action estimate, as DDIM's clip_sample does.
    return DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", solver_order=2,
                                       timestep_spacing="trailing", thresholding=config.clip_sample,
                                       sample_max_value=config.clip_sample_range)


def _denoiser_graph(adapter: DiTActionAdapter) -> TracedCall:
    """`adapter.denoise` as a traced graph (kept in the adapter's `inference_cache`)."""
    cache = inference_cache(adapter)
    graph = cache.get("denoiser")
    if graph is None:
        blocks = len(adapter.blocks)

        def denoise(noisy: Tensor, *flat: Tensor) -> tuple[Tensor]:
            modulations, kv = list(flat[:blocks + 1]), flat[blocks + 1:]
            context = kv[0] if adapter.config.cond_attention == "prefix" else list(zip(kv[::2], kv[1::2]))
            return (adapter.denoise(noisy, modulations, context),)

        graph = cache["denoiser"] = TracedCall(adapter, denoise)
    return graph


def _sampler_of(adapter: DiTActionAdapter, kind: str | None):
    # kept on the adapter as a plain attribute (not saved): building a scheduler costs more than a denoising step
    kind = adapter.config.sampler if kind is None else kind
    samplers = adapter.__dict__.setdefault("_samplers", {})
    if kind not in samplers:
        samplers[kind] = make_sampler(adapter.config, kind)
    return samplers[kind]


@torch.no_grad()
def sample_actions(adapter: DiTActionAdapter, cond_tokens: Tensor, global_cond: Tensor | None = None,
                   generator: torch.Generator | list[torch.Generator] | None = None, num_steps: int | None = None,
                   noise: Tensor | None = None, traced: bool = False, sampler: str | None = None) -> Tensor:
    """Denoise pure noise into an action chunk [B, Ha, A] (normalised) in `num_steps` (default: the config's
    `num_sampling_steps`) steps of `sampler` ("ddim" or "dpm_solver"; default: the config's).

    Deterministic given the initial noise: `noise` [B, Ha, A] itself, or drawn from `generator` (one generator, or
    one per batch row so that each row's draw does not depend on the batch it is in). DDIM with eta 0 and
    DPM-Solver++ add no noise after the first draw. Call `.eval()` first if the config uses dropout.
    `traced`: run the denoiser as a TorchScript trace (`defi.models.traced`; the same operations without the
    Python interpreter between them), for inference in eval mode.
    """
    cfg = adapter.config
    adapter._check_cond(cond_tokens, global_cond)
    steps = cfg.num_sampling_steps if num_steps is None else num_steps
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise ConfigError(f"num_steps={steps}: expected an integer in [1, {cfg.num_train_timesteps}]")
    batch = cond_tokens.shape[0]
    context_kv = adapter.context_kv(adapter.encode_condition(cond_tokens))  # shared by all denoising steps
    scheduler = _sampler_of(adapter, sampler)
    scheduler.set_timesteps(steps, device=cond_tokens.device)
    # The timestep grid is known in advance, so every step's adaLN parameters come from one batched pass:
    # at batch 1 the adapter is bound by reading weights, and the modulation layers hold ~30% of them.
    timesteps = scheduler.timesteps
    all_steps = adapter.modulations(
        timesteps.repeat_interleave(batch), None if global_cond is None else global_cond.repeat(len(timesteps), 1)
    )
    per_step = [[m.unflatten(0, (len(timesteps), batch))[i] for m in all_steps] for i in range(len(timesteps))]
    # the sampler's state stays float32 even under bf16 autocast (only the network runs in low precision)
    if noise is None:
        shape = (batch, cfg.action_horizon, cfg.action_dim)
        noise = randn_tensor(shape, generator=generator, device=cond_tokens.device, dtype=torch.float32)
    actions = noise.float() * scheduler.init_noise_sigma
    if traced:
        graph = _denoiser_graph(adapter)
        graph.check()
        kv = [context_kv] if cfg.cond_attention == "prefix" else [t for pair in context_kv for t in pair]
        denoise = lambda x, modulations: graph(x, *modulations, *kv)[0]  # noqa: E731
    else:
        denoise = lambda x, modulations: adapter.denoise(x, modulations, context_kv)  # noqa: E731
    for t, modulations in zip(timesteps, per_step):
        model_input = scheduler.scale_model_input(actions, t)
        prediction = denoise(model_input, modulations).float()
        actions = scheduler.step(prediction, t, actions).prev_sample
    if cfg.clip_sample:
        actions = actions.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return actions
