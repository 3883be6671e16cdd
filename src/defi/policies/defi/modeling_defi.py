"""The coupled DeFI policy (paper §3.3-3.4): the only module that knows how GFDM, MLP, GIDM, Video Former and
adapter connect.

    o_t, instruction ─▶ GFDM, ONE denoising step ─┬─ one-step future latents ─▶ MLP ─▶ future tokens ─┐
                                                  └─ block features ─▶ Video Former ─▶ video tokens ─┐ │
    o_t ─▶ frozen frame encoder ─▶ current tokens ───────────────────────────────────▶ GIDM encoder ◀┘ │
                                                                        latent-action features ─┐      │
    instruction (pooled), proprio state ─▶ global condition ─▶ DiT action adapter ◀── fused tokens ◀┴──────┘
                                                                   └─▶ action chunk (10 sampling steps)

- The GFDM is frozen by default (paper §3.3): its one-step features are computed without gradients.
- The MLP maps the GFDM's predicted future onto the GIDM's input space (the frozen frame encoder's patch tokens).
  With the GFDM's residual target the one-step estimate is a motion field, so the MLP predicts the change of each
  patch token and the future tokens start at e_t ("no motion") before training.
- The GIDM's decoder is discarded (appendix A.3); only its encoder and bottleneck run here.
- Latent-action features and Video Former tokens are projected to a common width and concatenated into the
  adapter's condition tokens; the pooled instruction embedding (plus the normalised proprio state) is the
  adapter's global condition (adaLN).
- Which parts train is a config (paper Table 9): adapter / gfdm+adapter / gidm+adapter (default) / all.

Each step of `condition` is its own method (`gfdm_features`, `video_tokens`, `current_tokens`, `latent_actions`,
`global_condition`), so the latency table times the policy's own path. Saved one folder per component (`gfdm/`,
`gidm/`, `video_former/`, `adapter/`, each loadable on its own with `from_pretrained`); the top folder holds the
config and the connecting weights (MLP, projections, normaliser).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from defi.config import replace, validate_config
from defi.errors import DefiError, ShapeError, check_shape
from defi.models.adapter import DiTActionAdapter, sample_actions
from defi.models.base import PretrainedMixin
from defi.models.encoders import shared_encoder
from defi.models.forward import (
    ForwardDynamicsModel,
    VideoFormer,
    fast_one_step,
    one_step,
    to_uint8,
    to_unit_range,
)
from defi.models.inverse import GIDM
from defi.models.layers import random_shift
from defi.models.traced import TracedCall, inference_cache
from defi.policies.base import Normalizer, PolicyMetadata, TorchPolicyMixin
from defi.policies.defi.configuration_defi import DeFIConfig, Trainable


def run_model_dir(run: str | Path, what: str) -> Path:
    """The saved model of a pretraining run directory (its `model/`), or a model directory itself."""
    path = Path(run)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    raise DefiError(f"--{what} {path}: expected a pretrain-{what} run directory holding model/ (config.json and "
                    "model.safetensors)")


class DeFIPolicy(TorchPolicyMixin, PretrainedMixin, nn.Module):
    config_class: ClassVar[type] = DeFIConfig
    components: ClassVar[tuple[str, ...]] = ("gfdm", "gidm", "video_former", "adapter")
    # Inference optimisations (eval mode, no gradients; each keeps the actions equal up to float rounding and is
    # switched off per instance by benchmarks/bench_step.py to measure it): the GFDM's one-step features by
    # `FastOneStep` (constants computed once), the GIDM's last block on the action queries only, and the
    # networks run as traced graphs (`defi.models.traced`).
    fast_gfdm: bool = True
    fast_gidm: bool = True
    traced_inference: bool = True
    # The adapter's sampler and step count at inference when not the config's (None). These CHANGE the actions:
    # to evaluate a cheaper sampler with a trained policy, set them on the loaded policy (or a fork), e.g.
    # `policy.sampler, policy.sampling_steps = "dpm_solver", 5`.
    sampler: str | None = None
    sampling_steps: int | None = None

    def __init__(self, config: DeFIConfig):
        super().__init__()
        if config.gfdm_feature_layers and tuple(config.forward.features.layers) != tuple(config.gfdm_feature_layers):
            config = config.with_forward(config.forward)
        validate_config(config)
        self.config = config
        inverse = config.inverse
        self.gfdm = ForwardDynamicsModel(config.forward)
        self.gidm = GIDM(inverse)
        self.video_former = VideoFormer(config.video_former)
        side = int(round(inverse.num_patches ** 0.5))
        if side * side != inverse.num_patches:
            raise DefiError(f"config key inverse.num_patches={inverse.num_patches}: expected a square patch grid")
        self.grid = (side, side)
        latent_side = config.forward.latent_side
        # the one-step latents are folded (space-to-depth) onto the patch grid when the sides divide, else pooled
        self.unshuffle = latent_side // side if latent_side % side == 0 else 0
        patch_in = config.forward.latent_channels * (self.unshuffle**2 if self.unshuffle else 1)
        # the MLP of §3.3: one-step future latents -> change of the GIDM's patch tokens
        self.future_mlp = nn.Sequential(nn.Linear(patch_in, config.projector_hidden), nn.GELU(),
                                        nn.Linear(config.projector_hidden, inverse.feature_dim))
        nn.init.zeros_(self.future_mlp[-1].weight)
        nn.init.zeros_(self.future_mlp[-1].bias)
        self.latent_action_proj = nn.Linear(inverse.dim, config.fused_dim)
        self.video_proj = nn.Linear(config.video_former.dim, config.fused_dim)
        num_tokens = inverse.num_action_queries + len(config.cameras) * config.video_former.num_tokens
        self.adapter = DiTActionAdapter(config.adapter.with_interface(
            cond_dim=config.fused_dim, num_cond_tokens=num_tokens,
            global_cond_dim=config.adapter_text_dim + config.state_dim))
        fields = {"action": (config.action_dim, config.action_normalization)}
        if config.state_dim:
            fields["observation.state"] = (config.state_dim, "mean_std")
        self.normalizer = Normalizer(fields)
        self.set_trainable(config.trainable)
        inference_cache(self)  # made here, so that forks share it
        self._init_episode_state()

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def from_pretrained_runs(cls, config: DeFIConfig, fdm: str | Path = "", idm: str | Path = "",
                             pretrained_weights: bool = True, random_gfdm: bool = False,
                             random_gidm: bool = False) -> DeFIPolicy:
        """A policy built around pretrained `defi pretrain-fdm` / `pretrain-idm` runs: their architectures (and,
        for the GIDM, its encoders and camera) replace the config's; their weights are loaded unless
        `pretrained_weights` is False (the same architecture from scratch) or `random_gfdm` / `random_gidm` says
        so for one part (paper Table 4)."""
        gfdm = gidm = None
        if fdm:
            gfdm = ForwardDynamicsModel.from_pretrained(run_model_dir(fdm, "fdm"))
            config = config.with_forward(gfdm.config)
        if idm:
            gidm = GIDM.from_pretrained(run_model_dir(idm, "idm"))
            if gidm.config.camera not in config.cameras:
                raise DefiError(f"--idm {idm}: the GIDM was pretrained on camera {gidm.config.camera!r}, which the "
                                f"policy does not use (policy cameras {list(config.cameras)})")
            config = replace(config, inverse=gidm.config)
        policy = cls(config)
        if gfdm is not None and pretrained_weights and not random_gfdm:
            policy.gfdm.load_state_dict(gfdm.state_dict())
        if gidm is not None and pretrained_weights and not random_gidm:
            policy.gidm.load_state_dict(gidm.state_dict())
        return policy

    def set_trainable(self, which: Trainable) -> None:
        """Paper Table 9: freeze the GFDM and/or the GIDM; the MLP, Video Former and adapter always train."""
        self.trainable = which
        self.gfdm.requires_grad_(self.gfdm_trains)
        self.gidm.requires_grad_(which in ("gidm+adapter", "all"))
        # the decoder is pretraining-only (appendix A.3): never trained here
        for name, param in self.gidm.named_parameters():
            if name.startswith("decoder"):
                param.requires_grad_(False)

    @property
    def gfdm_trains(self) -> bool:
        return self.trainable in ("gfdm+adapter", "all")

    def train(self, mode: bool = True) -> DeFIPolicy:
        # a frozen part stays in eval mode: no dropout, and the GIDM's EMA codebook must not drift
        super().train(mode)
        if not self.gfdm_trains:
            self.gfdm.eval()
        if self.trainable not in ("gidm+adapter", "all"):
            self.gidm.eval()
        return self

    # ------------------------------------------------------------------------------------------ frozen parts
    def cacheable_inputs(self) -> tuple[str, ...]:
        """Names of the frozen, deterministic per-clip values `condition` accepts precomputed (the frame encoder
        always; the GFDM's one-step outputs only while it is frozen). The text encoders memoise per string
        already, so they need no cache. With `random_shift` the images differ every step: nothing is cacheable."""
        if self.config.random_shift:
            return ()
        layers = tuple(f"gfdm.{name}" for name in self.config.video_former.layers)
        return ("current_tokens",) + (() if self.gfdm_trains else layers + ("gfdm.future",))

    @torch.no_grad()
    def frozen_features(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The frozen parts' outputs for a clip batch, per clip (finetuning's feature cache feeds them back to
        `forward` as "cache.<name>" keys): "current_tokens" [B, P, D], "gfdm.<layer>" [B, V, F, C, h, w] and
        "gfdm.future" [B, C, h', w']."""
        names = self.cacheable_inputs()
        images = batch["images"]
        out: dict[str, torch.Tensor] = {"current_tokens": self.current_tokens(images)}
        if "gfdm.future" in names:
            feats, future = self.gfdm_features(images, batch["instruction"])
            b = images.shape[0]
            for name, value in feats.items():
                out[f"gfdm.{name}"] = rearrange(value, "(b v) f c h w -> b v f c h w", b=b)
            out["gfdm.future"] = future
        return {name: out[name] for name in names}

    # ------------------------------------------------------------------------------------------ the path
    def gfdm_features(self, images: torch.Tensor, instructions: Sequence[str]
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(1) The GFDM, ONE denoising step: block features {layer: [(b v), f, C, h, w]} and the GIDM view's chosen
        predicted frame's latents [b, C, h', w']. Gradients only when Table 9 trains the GFDM."""
        grad = self.gfdm_trains and self.training and torch.is_grad_enabled()
        if self.fast_gfdm and not self.training and not torch.is_grad_enabled():
            # evaluation: the same features from `FastOneStep` (constants computed once, the output layer on the
            # one frame read here); the other frames' latents are computed only if `imagined_frames` asks
            runner = fast_one_step(self.gfdm)
            feats, future, hidden = runner.features(images, list(instructions), self.config.gidm_view,
                                                    self.config.future_frame, traced=self.traced_inference)
            self._imagined, self._imagined_hidden, self._last_current = None, hidden, images
            return feats, future
        with torch.set_grad_enabled(grad):
            feats = one_step(self.gfdm, images, list(instructions))
        latents = feats.pop("latents")
        if not self.training:  # what `imagined_frames` shows in evaluation videos
            self._imagined, self._imagined_hidden, self._last_current = latents.detach(), None, images.detach()
        b = images.shape[0]
        future = rearrange(latents, "(b v) f c h w -> b v f c h w", b=b)[:, self.config.gidm_view,
                                                                          self.config.future_frame]
        return feats, future

    def video_tokens(self, feats: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """(2) The Video Former over every view's block features -> [b, V * F * Q, fused_dim]."""
        if self._traced():
            layers = self.config.video_former.layers
            fn = lambda *x: (self._video_tokens(dict(zip(layers, x)), batch_size),)  # noqa: E731
            owner = (self.video_former, self.video_proj)
            return self._graph(f"video_tokens/{batch_size}", fn, owner)(*(feats[name] for name in layers))[0]
        return self._video_tokens(feats, batch_size)

    def _video_tokens(self, feats: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        video = self.video_proj(self.video_former(feats))
        return rearrange(video, "(b v) n d -> b (v n) d", b=batch_size)

    def current_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen frame encoder's patch tokens of o_t in the GIDM's view [b, P, D]."""
        return self.gidm.frame_tokens(images[:, self.config.gidm_view])

    def latent_actions(self, current_tokens: torch.Tensor, future: torch.Tensor,
                       instructions: Sequence[str]) -> torch.Tensor:
        """(3)+(4) The MLP maps the predicted future onto the GIDM's token space; the GIDM's encoder infers the
        latent actions from (e_t, projected future, instruction) -> [b, N, fused_dim]."""
        text = [t for t in self.gidm.text_tokens(instructions) if t is not None]  # (tokens, mask) or none
        if self._traced():
            owner = (self.future_mlp, self.gidm, self.latent_action_proj)
            return self._graph("latent_actions", self._latent_actions, owner)(current_tokens, future, *text)[0]
        return self._latent_actions(current_tokens, future, *text)[0]

    def _latent_actions(self, current_tokens: torch.Tensor, future: torch.Tensor, *text: torch.Tensor
                        ) -> tuple[torch.Tensor]:
        future = future.float()
        future = F.pixel_unshuffle(future, self.unshuffle) if self.unshuffle else F.adaptive_avg_pool2d(future, self.grid)
        future_tokens = current_tokens + self.future_mlp(rearrange(future, "b c h w -> b (h w) c"))
        text_tokens, text_mask = text if text else (None, None)
        # in evaluation the GIDM's last block computes only what the action queries read (the same values)
        queries_only = self.fast_gidm and not self.training
        features, _ = self.gidm.infer_latent_actions(current_tokens, future_tokens, text_tokens, text_mask,
                                                     queries_only=queries_only)
        return (self.latent_action_proj(features),)

    def global_condition(self, instructions: Sequence[str], state: torch.Tensor | None) -> torch.Tensor:
        """(5) The pooled instruction embedding (+ the normalised proprio state) -> [b, Dg]."""
        device = self.future_mlp[0].weight.device
        pooled = shared_encoder(self.config.adapter_text, device).encode(list(instructions)).pooled
        if not self.config.state_dim:
            return pooled
        if state is None:
            raise ShapeError(f"state: this policy needs a {self.config.state_dim}-dim proprio state")
        check_shape("state", state, (pooled.shape[0], self.config.state_dim), "config key state_dim")
        return torch.cat([pooled, self.normalizer.normalize("observation.state", state.float())], dim=-1)

    def condition(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip or observation batch -> (condition tokens [B, N, fused_dim], global condition [B, Dg]).

        Values of `frozen_features` given as "cache.<name>" keys replace their computation (finetuning's cache).
        In training, `random_shift` shifts every frame before any part sees it."""
        cfg = self.config
        images, instructions = batch["images"], list(batch["instruction"])
        b = images.shape[0]
        if images.ndim != 5 or images.shape[1:] != (len(cfg.cameras), 3, cfg.image_size, cfg.image_size):
            raise ShapeError(f"images: expected [B, {len(cfg.cameras)}, 3, {cfg.image_size}, {cfg.image_size}] "
                             f"(cameras {list(cfg.cameras)}), got {list(images.shape)}")
        if cfg.random_shift and self.training:
            if any(key.startswith("cache.") for key in batch):
                raise DefiError(f"random_shift={cfg.random_shift} augments the images every step: the frozen "
                                "parts' outputs cannot come from a feature cache")
            images = rearrange(random_shift(rearrange(images, "b v c h w -> (b v) c h w"), cfg.random_shift),
                               "(b v) c h w -> b v c h w", b=b)
        if "cache.gfdm.future" in batch:
            if self.gfdm_trains and self.training:
                raise DefiError(f"trainable={self.trainable!r} trains the GFDM: its outputs cannot come from a "
                                "feature cache (cache only the frozen parts)")
            feats = {name: rearrange(batch[f"cache.gfdm.{name}"].float(), "b v f c h w -> (b v) f c h w")
                     for name in cfg.video_former.layers}
            future = batch["cache.gfdm.future"]
        else:
            feats, future = self.gfdm_features(images, instructions)
        current = batch["cache.current_tokens"].float() if "cache.current_tokens" in batch else \
            self.current_tokens(images)
        tokens = torch.cat([self.latent_actions(current, future, instructions), self.video_tokens(feats, b)], dim=1)
        return tokens, self.global_condition(instructions, batch.get("state"))

    # ------------------------------------------------------------------------------------------ protocol
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The trainer's contract on a clip batch: masked denoising loss of the normalised action chunk."""
        actions = self.normalizer.normalize("action", batch["actions"].float())
        tokens, global_cond = self.condition(batch)
        return self.adapter.loss(actions, batch["action_mask"].bool(), tokens, global_cond)

    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised action chunks [B, Ha, A] from a batch of observations."""
        tokens, global_cond = self.condition(batch)
        chunk = sample_actions(self.adapter, tokens, global_cond, generator=generator, noise=noise,
                               traced=self._traced(), sampler=self.sampler, num_steps=self.sampling_steps)
        return self.normalizer.unnormalize("action", chunk)

    def _steps(self) -> int:
        return self.sampling_steps or self.config.adapter.num_sampling_steps

    def _traced(self) -> bool:
        return self.traced_inference and not self.training and not torch.is_grad_enabled()

    def _graph(self, name: str, fn, owners: tuple[nn.Module, ...]) -> TracedCall:
        """The policy's traced inference graph `name` of `fn`, which uses the parameters of `owners` (in the
        policy's `inference_cache`: not saved or copied, shared by forks)."""
        graphs = inference_cache(self)
        key = (name, self.fast_gidm)  # the flag is read while tracing
        if key not in graphs:
            graphs[key] = TracedCall(nn.ModuleList(owners), fn)
        graphs[key].check()
        return graphs[key]

    @torch.no_grad()
    def timed_parts(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The steps of one `predict_action_chunk` call as separate callables (paper Table 13's rows), each fed
        the previous steps' outputs, for `defi.eval.latency`."""
        images, words = batch["images"], list(batch["instruction"])
        feats, future = self.gfdm_features(images, words)
        current = self.current_tokens(images)
        tokens, cond = self.condition(batch)
        return {
            "GFDM one-step features": lambda: self.gfdm_features(images, words),
            "frame encoder (frozen)": lambda: self.current_tokens(images),
            "Video Former": lambda: self.video_tokens(feats, images.shape[0]),
            "MLP + GIDM encoder": lambda: self.latent_actions(current, future, words),
            f"adapter ({self._steps()}-step sampling)":
                lambda: sample_actions(self.adapter, tokens, cond, traced=self._traced(), sampler=self.sampler,
                                       num_steps=self.sampling_steps),
        }

    @property
    def metadata(self) -> PolicyMetadata:
        cfg = self.config
        return PolicyMetadata("defi", list(cfg.cameras), [cfg.image_size, cfg.image_size], cfg.state_dim,
                              cfg.action_dim, cfg.action_horizon, self._steps())

    def _init_episode_state(self) -> None:
        super()._init_episode_state()
        # the last call's one-step latents [(b v) f C h w], or FastOneStep's activations to compute them from
        self._imagined: torch.Tensor | None = None
        self._imagined_hidden: torch.Tensor | None = None
        self._last_current: torch.Tensor | None = None

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._imagined = self._imagined_hidden = self._last_current = None

    def imagined_frames(self, row: int = 0) -> np.ndarray | None:
        """The GFDM's one-step future of the first camera at the last call (batch row `row`), uint8 [F, H, W, 3]."""
        if self._imagined is None and self._imagined_hidden is not None:
            self._imagined = fast_one_step(self.gfdm).latents(self._imagined_hidden)
            self._imagined_hidden = None
        if self._imagined is None:
            return None
        v = len(self.config.cameras)
        with torch.no_grad():
            frames = self.gfdm.decode_latents(self._imagined[::v][row:row + 1],
                                              to_unit_range(self._last_current[row:row + 1, 0]))
        return rearrange(to_uint8(frames[0]), "f c h w -> f h w c").cpu().numpy()
