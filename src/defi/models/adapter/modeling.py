"""Diffusion-Transformer action adapter (paper §3.3, appendix A.3): denoises an action chunk [B, Ha, A].

Conditioning:
- condition tokens [B, N, Dc] (the policy's fused GIDM latent-action features and Video Former tokens) are
  layer-normed, projected to the model width and given a learned per-slot embedding (each slot is a fixed kind of
  token, e.g. "latent action 3" or "Video Former query 7"). By default the action tokens **cross-attend** to them in
  every block. Why cross-attention and not prefix tokens: the action chunk is short (8-10 tokens) while the
  condition set is several times longer, so cross-attention keeps self-attention and the MLPs on the action tokens
  only (per-block cost O(Ha*N) instead of O((Ha+N)^2) plus N extra MLP rows, 10 times per sample), and the
  condition, including every block's cross-attention keys/values, is projected once per `sample` call instead of
  at every denoising step. benchmarks/bench_adapter.py measures both (`cond_attention="prefix"` is kept as an
  option): prefix conditioning was ~1.5x slower per sample at `small` and `paper` on this CPU.
- the global condition vector [B, Dg] (instruction embedding, with the proprio state concatenated when present)
  is embedded by an MLP and added to the diffusion timestep embedding; the sum drives adaLN-Zero modulation of
  every block (DiT, Peebles & Xie 2023): per-block shift/scale/gate from a zero-initialised linear layer, so each
  block starts as the identity.

The noise schedule and training target come from diffusers (DDPMScheduler's `add_noise` / `get_velocity`); the
model only denoises, and the 10-step sampling loop lives in `sampler.py` (DDIM or DPM-Solver++, diffusers).
Actions are in normalised units here; the policies' `Normalizer` maps to and from dataset units.

Typical use by a policy:
    cfg = adapter_small().with_interface(cond_dim=Dc, num_cond_tokens=N, global_cond_dim=Dg)
    adapter = DiTActionAdapter(cfg)
    out = adapter.loss(actions, action_mask, cond_tokens, global_cond)      # out["loss"] is a scalar
    chunk = sample_actions(adapter, cond_tokens, global_cond, generator=g)  # [B, Ha, A], normalised (sampler.py)
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from defi.config import validate_config
from defi.errors import ShapeError, check_shape
from defi.models.adapter.configuration import ActionAdapterConfig
from defi.models.base import PretrainedMixin
from defi.models.layers import Attention, training_target

TIMESTEP_FREQ_DIM = 256  # sinusoidal timestep features before the MLP, as in DiT


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def pad_masked_actions(actions: Tensor, action_mask: Tensor) -> Tensor:
    """Replace masked steps [B, Ha, A] by the last valid action before them (zeros where there is none).

    Like Diffusion Policy's padding past the episode end: the network always sees a full, plausible chunk (as at
    sampling time), and whatever the data holds at masked steps cannot reach the loss.
    """
    horizon = actions.shape[1]
    steps = torch.arange(horizon, device=actions.device).expand_as(action_mask)
    last_valid = torch.where(action_mask, steps, torch.full_like(steps, -1)).cummax(dim=1).values  # [B, Ha]
    gathered = actions.gather(1, last_valid.clamp(min=0).unsqueeze(-1).expand_as(actions))
    return torch.where((last_valid >= 0).unsqueeze(-1), gathered, torch.zeros_like(actions))


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention block, with an optional cross-attention to the condition tokens (as in PixArt)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, cross_attention: bool):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(dim, heads, dropout)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross_attention else None
        self.cross_attn = Attention(dim, heads, dropout) if cross_attention else None
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, tokens: Tensor, modulation: Tensor, context_kv: tuple[Tensor, Tensor] | None) -> Tensor:
        """tokens [B, T, D]; modulation [B, 6D] = self.modulation(timestep + global condition embedding);
        context_kv from cross_attn.project_kv (None in prefix mode)."""
        shift_sa, scale_sa, gate_sa, shift_mlp, scale_mlp, gate_mlp = modulation.unsqueeze(1).chunk(6, -1)
        tokens = tokens + gate_sa * self.self_attn(_modulate(self.norm_self(tokens), shift_sa, scale_sa))
        if self.cross_attn is not None:
            tokens = tokens + self.cross_attn(self.norm_cross(tokens), kv=context_kv)
        return tokens + gate_mlp * self.mlp(_modulate(self.norm_mlp(tokens), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor, modulation: Tensor) -> Tensor:
        """tokens [B, T, D]; modulation [B, 2D] = self.modulation(condition embedding)."""
        shift, scale = modulation.unsqueeze(1).chunk(2, -1)
        return self.out(_modulate(self.norm(tokens), shift, scale))


class DiTActionAdapter(nn.Module, PretrainedMixin):
    """Denoises an action chunk [B, Ha, A] given condition tokens [B, N, Dc] and a global condition [B, Dg]."""

    config_class = ActionAdapterConfig

    def __init__(self, config: ActionAdapterConfig):
        super().__init__()
        validate_config(config)
        config.require_interface()
        self.config = config
        dim = config.dim
        self.action_in = nn.Linear(config.action_dim, dim)
        self.action_pos = nn.Parameter(torch.zeros(1, config.action_horizon, dim))
        self.cond_norm = nn.LayerNorm(config.cond_dim)
        self.cond_in = nn.Linear(config.cond_dim, dim)
        self.cond_pos = nn.Parameter(torch.zeros(1, config.num_cond_tokens, dim))
        self.time_proj = Timesteps(TIMESTEP_FREQ_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(TIMESTEP_FREQ_DIM, dim)
        self.global_embed = (
            nn.Sequential(nn.Linear(config.global_cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if config.global_cond_dim > 0
            else None
        )
        cross = config.cond_attention == "cross"
        self.blocks = nn.ModuleList(
            DiTBlock(dim, config.heads, config.mlp_ratio, config.dropout, cross) for _ in range(config.depth)
        )
        self.final = FinalLayer(dim, config.action_dim)
        self._init_weights()
        # training needs only add_noise / get_velocity, which do not depend on a sampler's timestep grid
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                             beta_schedule=config.beta_schedule,
                                             prediction_type=config.prediction_type, clip_sample=False)

    def _init_weights(self) -> None:
        # DiT's initialisation: xavier linears, small position embeddings, zeroed adaLN and output layers, and
        # (as in PixArt) a zeroed cross-attention output so every block starts as the identity.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        for layer in (self.time_embed.linear_1, self.time_embed.linear_2):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
            if block.cross_attn is not None:
                nn.init.zeros_(block.cross_attn.out.weight)
                nn.init.zeros_(block.cross_attn.out.bias)
        for layer in (self.final.modulation[-1], self.final.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- conditioning -------------------------------------------------------------------------------------
    def _check_cond(self, cond_tokens: Tensor, global_cond: Tensor | None) -> None:
        cfg = self.config
        check_shape("cond_tokens", cond_tokens, ("B", cfg.num_cond_tokens, cfg.cond_dim),
                    "config keys num_cond_tokens, cond_dim")
        if cfg.global_cond_dim > 0:
            if global_cond is None:
                raise ShapeError(f"global_cond is missing: expected [B, {cfg.global_cond_dim}] (config key "
                                 "global_cond_dim)")
            check_shape("global_cond", global_cond, (cond_tokens.shape[0], cfg.global_cond_dim),
                        "config key global_cond_dim")
        elif global_cond is not None and global_cond.numel() > 0:
            raise ShapeError(f"global_cond: expected none (config key global_cond_dim=0), got "
                             f"{list(global_cond.shape)}")

    def encode_condition(self, cond_tokens: Tensor) -> Tensor:
        """Condition tokens [B, N, Dc] -> context [B, N, D] (done once per `sample` call)."""
        return self.cond_in(self.cond_norm(cond_tokens)) + self.cond_pos

    def _cond_embedding(self, timesteps: Tensor, global_cond: Tensor | None, dtype: torch.dtype) -> Tensor:
        emb = self.time_embed(self.time_proj(timesteps).to(dtype))  # [B, D]
        if self.global_embed is not None:
            emb = emb + self.global_embed(global_cond)
        return emb

    def context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]] | Tensor:
        """Per-block cross-attention keys/values of the context (cross mode), or the context itself (prefix)."""
        if self.config.cond_attention == "prefix":
            return context
        return [block.cross_attn.project_kv(context) for block in self.blocks]

    def modulations(self, timesteps: Tensor, global_cond: Tensor | None) -> list[Tensor]:
        """adaLN parameters for `timesteps` [B]: [B, 6D] for every block, then [B, 2D] for the final layer."""
        cond_emb = self._cond_embedding(timesteps, global_cond, self.action_pos.dtype)
        return [block.modulation(cond_emb) for block in self.blocks] + [self.final.modulation(cond_emb)]

    def denoise(self, noisy_actions: Tensor, modulations: list[Tensor],
                 context_kv: list[tuple[Tensor, Tensor]] | Tensor) -> Tensor:
        tokens = self.action_in(noisy_actions) + self.action_pos  # [B, Ha, D]
        if self.config.cond_attention == "prefix":
            num_cond = context_kv.shape[1]
            tokens = torch.cat([context_kv, tokens], dim=1)
            for block, modulation in zip(self.blocks, modulations):
                tokens = block(tokens, modulation, None)
            tokens = tokens[:, num_cond:]
        else:
            for block, modulation, kv in zip(self.blocks, modulations, context_kv):
                tokens = block(tokens, modulation, kv)
        return self.final(tokens, modulations[-1])

    def forward(self, noisy_actions: Tensor, timesteps: Tensor, cond_tokens: Tensor,
                global_cond: Tensor | None = None) -> Tensor:
        """The denoiser: noisy actions [B, Ha, A] at `timesteps` [B] -> prediction [B, Ha, A] (epsilon, v or x0)."""
        cfg = self.config
        self._check_cond(cond_tokens, global_cond)
        check_shape("noisy_actions", noisy_actions, (cond_tokens.shape[0], cfg.action_horizon, cfg.action_dim),
                    "config keys action_horizon, action_dim")
        context_kv = self.context_kv(self.encode_condition(cond_tokens))
        return self.denoise(noisy_actions, self.modulations(timesteps, global_cond), context_kv)

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, actions: Tensor, action_mask: Tensor, cond_tokens: Tensor, global_cond: Tensor | None = None,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Denoising loss (MSE on the configured target) over the valid steps of the chunk.

        actions [B, Ha, A] normalised; action_mask [B, Ha] bool (False past the episode end or without labels:
        such steps neither enter the loss nor, through the padding, the network's input).
        Returns {"loss": scalar}.
        """
        cfg = self.config
        self._check_cond(cond_tokens, global_cond)
        batch = cond_tokens.shape[0]
        check_shape("actions", actions, (batch, cfg.action_horizon, cfg.action_dim),
                    "config keys action_horizon, action_dim")
        check_shape("action_mask", action_mask, (batch, cfg.action_horizon), "config key action_horizon")
        action_mask = action_mask.bool()
        actions = pad_masked_actions(actions, action_mask)
        noise = randn_tensor(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        rng_device = generator.device if generator is not None else actions.device
        timesteps = torch.randint(0, cfg.num_train_timesteps, (batch,), generator=generator, device=rng_device)
        timesteps = timesteps.to(actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, timesteps)
        target = training_target(self.noise_scheduler, cfg.prediction_type, actions, noise, timesteps)
        context_kv = self.context_kv(self.encode_condition(cond_tokens))
        prediction = self.denoise(noisy, self.modulations(timesteps, global_cond), context_kv)
        per_step = (prediction.float() - target.float()).pow(2).mean(dim=-1)  # [B, Ha]
        weight = action_mask.float()
        return {"loss": (per_step * weight).sum() / weight.sum().clamp(min=1.0)}
