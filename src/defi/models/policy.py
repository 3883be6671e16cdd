"""The coupled DeFI policy (paper §3.3-3.4): the only module that knows how GFDM, GIDM and adapter connect.

    o_t, instruction ─▶ GFDM, ONE denoising step ─┬─ one-step future latents ─▶ MLP ─▶ future tokens ─┐
                                                  └─ block features ─▶ Video Former ─▶ video tokens ─┐ │
    o_t ─▶ frozen frame encoder ─▶ current tokens ───────────────────────────────────▶ GIDM encoder ◀┘ │
                                                                        latent-action features ─┐      │
    instruction (pooled), proprio state ─▶ global condition ─▶ DiT action adapter ◀── fused tokens ◀┴──────┘
                                                                   └─▶ action chunk (10 sampling steps)

- The GFDM is frozen by default (paper §3.3): its one-step features are computed without gradients.
- The MLP maps the GFDM's predicted future onto the GIDM's input space (the frozen frame encoder's patch
  tokens). With the GFDM's residual target the one-step estimate is a motion field, so the MLP predicts the
  change of each patch token and the future tokens start at e_t ("no motion") before training.
- The GIDM's decoder is discarded (appendix A.3); only its encoder and bottleneck run here.
- Latent-action features and Video Former tokens are projected to a common width and concatenated into the
  adapter's condition tokens; the pooled instruction embedding (plus the normalised proprio state) is the
  adapter's global condition (adaLN).
- Which parts train is a config (paper Table 9): adapter / gfdm+adapter / gidm+adapter (default) / all.

Policy API: `reset()`, `act(observation, instruction) -> float32 [Ha, A]`, `metadata`, `save_pretrained` /
`from_pretrained`, and `imagined_frames()` (the GFDM's one-step future, for evaluation videos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from defi.config import Config, replace, validate_config
from defi.errors import DefiError
from defi.models.adapter import ActionAdapterConfig, ActionNormalizer, DiTActionAdapter, adapter_paper, adapter_small, adapter_tiny
from defi.models.base import PretrainedMixin
from defi.models.encoders.frame import FrameEncoderConfig, build_frame_encoder
from defi.models.encoders.text import TextEncoder, TextEncoderConfig, build_text_encoder
from defi.models.forward.config import ForwardDynamicsConfig
from defi.models.forward.config import paper as fdm_paper
from defi.models.forward.config import small as fdm_small
from defi.models.forward.config import tiny as fdm_tiny
from defi.models.forward.model import ForwardDynamicsModel, to_uint8, to_unit_range
from defi.models.forward.video_former import VideoFormer, VideoFormerConfig
from defi.models.inverse import GIDM, GIDMConfig, gidm_paper, gidm_small, gidm_tiny

Trainable = Literal["adapter", "gfdm+adapter", "gidm+adapter", "all"]


@dataclass
class DeFIPolicyConfig(Config):
    cameras: tuple[str, ...] = ("corner",)
    image_size: int = 64
    action_dim: int = 4
    action_horizon: int = 8
    state_dim: int = 4  # 0: no proprio input
    gidm_view: int = 0  # which camera the GIDM sees (it was pretrained on one view)
    future_frame: int = -1  # which of the GFDM's predicted frames the MLP maps to the GIDM's o_{t+n}
    projector_hidden: int = 512
    fused_dim: int = 128  # width of the adapter's condition tokens
    trainable: Trainable = "gidm+adapter"
    action_normalization: Literal["min_max", "mean_std"] = "min_max"
    forward: ForwardDynamicsConfig = field(default_factory=fdm_small)
    inverse: GIDMConfig = field(default_factory=gidm_small)
    frame_encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    inverse_text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # T5 at paper scale
    adapter_text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # CLIP at paper scale
    video_former: VideoFormerConfig = field(default_factory=VideoFormerConfig)
    # cond_dim / num_cond_tokens / global_cond_dim follow from the fields above: leave them null
    adapter: ActionAdapterConfig = field(default_factory=adapter_small)
    adapter_text_dim: int = 384

    def validate(self) -> None:
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")
        self.check(0 <= self.gidm_view < len(self.cameras), "gidm_view", f"an index below {len(self.cameras)}")
        self.check(self.image_size == self.forward.image_size, "image_size",
                   f"the GFDM's image size ({self.forward.image_size})")
        self.check(self.action_dim == self.adapter.action_dim, "action_dim", f"adapter.action_dim ({self.adapter.action_dim})")
        self.check(self.action_horizon == self.adapter.action_horizon, "action_horizon",
                   f"adapter.action_horizon ({self.adapter.action_horizon})")
        self.check(-self.forward.num_frames <= self.future_frame < self.forward.num_frames, "future_frame",
                   f"an index into the GFDM's {self.forward.num_frames} predicted frames")
        self.check(self.state_dim >= 0, "state_dim", ">= 0")
        self.check(self.fused_dim >= 1 and self.projector_hidden >= 1, "fused_dim", "positive widths")


def video_former_for(fdm: ForwardDynamicsConfig, **kw) -> VideoFormerConfig:
    """A Video Former reading every feature layer the GFDM config exposes, at its real width."""
    from types import SimpleNamespace

    # the widths depend on the config alone: ask without building the UNet
    widths = ForwardDynamicsModel.feature_channels(SimpleNamespace(config=fdm))
    return VideoFormerConfig(layers=tuple(widths), in_channels=tuple(widths.values()), num_frames=fdm.num_frames, **kw)


def policy_tiny() -> DeFIPolicyConfig:
    fdm = fdm_tiny()
    return DeFIPolicyConfig(
        image_size=fdm.image_size, action_horizon=4, projector_hidden=32, fused_dim=32, forward=fdm,
        inverse=replace(gidm_tiny(), text_dim=384),
        frame_encoder=FrameEncoderConfig(kind="patch", image_size=fdm.image_size, patch_size=8, dim=16),
        video_former=video_former_for(fdm, dim=32, num_queries=2, depth=1, heads=2),
        adapter=_horizon(adapter_tiny(), 4),
    )


def policy_small() -> DeFIPolicyConfig:
    fdm = fdm_small()
    return DeFIPolicyConfig(
        forward=fdm, inverse=gidm_small(),
        frame_encoder=FrameEncoderConfig(kind="patch", image_size=64, patch_size=16, dim=256),
        video_former=video_former_for(fdm, dim=128, num_queries=4, depth=1, heads=4),
        adapter=_horizon(adapter_small(), 8),
    )


def policy_paper() -> DeFIPolicyConfig:
    fdm = fdm_paper()
    return DeFIPolicyConfig(
        cameras=("static", "gripper"), image_size=256, action_dim=7, action_horizon=10, state_dim=0,
        projector_hidden=1024, fused_dim=384, forward=fdm, inverse=gidm_paper(),
        frame_encoder=FrameEncoderConfig(kind="dinov2", image_size=224),
        inverse_text=TextEncoderConfig(kind="t5", max_length=32),
        adapter_text=TextEncoderConfig(kind="clip", name_or_path="openai/clip-vit-large-patch14", max_length=77),
        adapter_text_dim=768,
        video_former=video_former_for(fdm, dim=384, num_queries=8, depth=2, heads=6),
        adapter=_horizon(adapter_paper(), 10),
    )


def _horizon(cfg: ActionAdapterConfig, horizon: int) -> ActionAdapterConfig:
    return replace(cfg, action_horizon=horizon)


POLICY_PRESETS = {"tiny": policy_tiny, "small": policy_small, "paper": policy_paper}


class _Frozen:
    """Holds frozen helpers (encoders) outside the module tree: never saved, never optimised, shared."""

    def __init__(self) -> None:
        self.text: dict[str, TextEncoder] = {}
        self.frame = None


class DeFIPolicy(PretrainedMixin, nn.Module):
    config_class: ClassVar[type] = DeFIPolicyConfig

    def __init__(self, config: DeFIPolicyConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        self._frozen = _Frozen()
        frame_encoder = self.frame_encoder()
        inverse = config.inverse
        if (inverse.feature_dim, inverse.num_patches) != (frame_encoder.dim, frame_encoder.num_patches):
            raise DefiError(
                f"config key inverse: the GIDM expects {inverse.num_patches} tokens of width {inverse.feature_dim}, "
                f"but the frame encoder gives {frame_encoder.num_patches} x {frame_encoder.dim}")
        self.gfdm = ForwardDynamicsModel(config.forward)
        self.gidm = GIDM(config.inverse)
        self.video_former = VideoFormer(config.video_former)
        widths = self.gfdm.feature_channels()
        for name, width in zip(config.video_former.layers, config.video_former.in_channels):
            if widths.get(name) != width:
                raise DefiError(f"config key video_former.in_channels: layer {name!r} of the GFDM is "
                                f"{widths.get(name)} channels wide (features.layers {sorted(widths)}), not {width}")
        latent_channels = config.forward.latent_channels
        self.grid = frame_encoder.grid
        side = config.forward.latent_side
        self.unshuffle = side // self.grid[0] if side % self.grid[0] == 0 and self.grid[0] == self.grid[1] else 0
        patch_in = latent_channels * (self.unshuffle**2 if self.unshuffle else 1)
        # eq. "MLP": one-step future latents -> change of the GIDM's patch tokens
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
        self.action_normalizer = ActionNormalizer(config.action_dim, config.action_normalization)
        self.state_normalizer = ActionNormalizer(config.state_dim, "mean_std") if config.state_dim else None
        self.set_trainable(config.trainable)
        # one frozen encoder per text config for the whole policy: otherwise the GFDM loads its own copy
        self.gfdm.set_text_encoder(self.text_encoder(config.forward.text_encoder))
        self._imagined: torch.Tensor | None = None
        self._last_current: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ set-up
    def text_encoder(self, cfg: TextEncoderConfig) -> TextEncoder:
        key = repr(cfg)
        if key not in self._frozen.text:
            self._frozen.text[key] = build_text_encoder(cfg)
        encoder = self._frozen.text[key]
        device = self.future_mlp[0].weight.device if hasattr(self, "future_mlp") else torch.device("cpu")
        if next(encoder.model.parameters()).device != device:
            encoder.to(device)
        return encoder

    def frame_encoder(self):
        if self._frozen.frame is None:
            self._frozen.frame = build_frame_encoder(self.config.frame_encoder)
        return self._frozen.frame

    def set_trainable(self, which: Trainable) -> None:
        """Paper Table 9: freeze the GFDM and/or the GIDM; the MLP, Video Former and adapter always train."""
        self.trainable = which
        self.gfdm.requires_grad_(which in ("gfdm+adapter", "all"))
        self.gidm.requires_grad_(which in ("gidm+adapter", "all"))
        # the decoder is pretraining-only (appendix A.3): never trained here
        for name, param in self.gidm.named_parameters():
            if name.startswith("decoder"):
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "DeFIPolicy":
        # a frozen part stays in eval mode: no dropout, and the GIDM's EMA codebook must not drift
        super().train(mode)
        if self.trainable not in ("gfdm+adapter", "all"):
            self.gfdm.eval()
        if self.trainable not in ("gidm+adapter", "all"):
            self.gidm.eval()
        return self

    def set_normalization(self, action_stats: Mapping[str, Any], state_stats: Mapping[str, Any] | None = None) -> None:
        self.action_normalizer.set_stats(action_stats)
        if self.state_normalizer is not None:
            if state_stats is None:
                raise DefiError("the policy uses the proprio state but the dataset has no state statistics")
            self.state_normalizer.set_stats(state_stats)

    @classmethod
    def from_pretrained_parts(cls, config: DeFIPolicyConfig, gfdm: ForwardDynamicsModel | None,
                              gidm: GIDM | None) -> "DeFIPolicy":
        """A policy whose GFDM / GIDM start from pretrained models (None: keep the random initialisation)."""
        policy = cls(config)
        if gfdm is not None:
            policy.gfdm.load_state_dict(gfdm.state_dict())
        if gidm is not None:
            policy.gidm.load_state_dict(gidm.state_dict())
        return policy

    # ------------------------------------------------------------------------------------------ network
    def _device(self) -> torch.device:
        return self.future_mlp[0].weight.device

    @property
    def gfdm_trains(self) -> bool:
        return self.trainable in ("gfdm+adapter", "all")

    def cacheable_inputs(self) -> tuple[str, ...]:
        """Names of the frozen, deterministic per-clip values `condition` accepts precomputed (the frame encoder
        always; the GFDM's one-step outputs only while it is frozen). The text encoders memoise per string
        already, so they need no cache."""
        layers = tuple(f"gfdm.{name}" for name in self.config.video_former.layers)
        return ("current_tokens",) + (() if self.gfdm_trains else layers + ("gfdm.future",))

    @torch.no_grad()
    def frozen_features(self, images: torch.Tensor, instructions: Sequence[str],
                        names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """What the frozen parts give for a batch of clips, per clip (finetuning computes it once and feeds it
        back to `forward` as batch keys "cache.<name>"): "current_tokens" [B, P, D] (frame encoder on the GIDM's
        view), "gfdm.<layer>" [B, V, F, C, h, w] and "gfdm.future" [B, C, h', w'] (the chosen view's and frame's
        one-step future latents)."""
        names = self.cacheable_inputs() if names is None else tuple(names)
        cfg = self.config
        b = images.shape[0]
        out: dict[str, torch.Tensor] = {}
        if any(n.startswith("gfdm.") for n in names):
            feats = self.gfdm.extract_features(images, list(instructions))
            latents = feats.pop("latents")
            for name, value in feats.items():
                out[f"gfdm.{name}"] = rearrange(value, "(b v) f c h w -> b v f c h w", b=b)
            out["gfdm.future"] = self._future_latents(latents, b)
        if "current_tokens" in names:
            out["current_tokens"] = self.frame_encoder().to(images.device)(images[:, cfg.gidm_view])
        return {name: out[name] for name in names}

    def _future_latents(self, latents: torch.Tensor, b: int) -> torch.Tensor:
        """[(b v), f, C, h, w] -> the GIDM view's chosen predicted frame [b, C, h, w]."""
        return rearrange(latents, "(b v) f c h w -> b v f c h w", b=b)[:, self.config.gidm_view,
                                                                        self.config.future_frame]

    def condition(self, images: torch.Tensor, instructions: Sequence[str], state: torch.Tensor | None,
                  keep_imagination: bool = False, cached: Mapping[str, torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """images uint8 [B, V, 3, H, W] -> (condition tokens [B, N, fused_dim], global condition [B, Dg]).

        `cached`: values of `frozen_features` computed beforehand (finetuning's feature cache); each one given
        replaces its computation here. Inference passes none."""
        cfg = self.config
        b, v = images.shape[:2]
        if v != len(cfg.cameras) or images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
            raise DefiError(f"images: expected [B, {len(cfg.cameras)}, 3, {cfg.image_size}, {cfg.image_size}] "
                            f"(cameras {list(cfg.cameras)}), got {list(images.shape)}")
        instructions = list(instructions)
        cached = cached or {}
        # (1) the GFDM, one denoising step; frozen unless Table 9 says otherwise
        gfdm_grad = self.gfdm_trains and self.training
        if "gfdm.future" in cached:
            if gfdm_grad:
                raise DefiError(f"trainable={self.trainable!r} trains the GFDM: its outputs cannot come from a "
                                "feature cache (cache only the frozen parts)")
            feats = {name: rearrange(cached[f"gfdm.{name}"].float(), "b v f c h w -> (b v) f c h w")
                     for name in cfg.video_former.layers}
            future = cached["gfdm.future"]
        else:
            if gfdm_grad and torch.is_grad_enabled():
                # extract_features is decorated with no_grad for the usual frozen GFDM; Table 9's GFDM+adapter
                # and all-train rows need its gradients, so call the undecorated function
                feats = type(self.gfdm).extract_features.__wrapped__(self.gfdm, images, instructions)
            else:
                with torch.no_grad():
                    feats = self.gfdm.extract_features(images, instructions)
            latents = feats.pop("latents")  # [(b v), f, C, h, w]
            if keep_imagination:
                self._imagined = latents.detach()
                self._last_current = images.detach()
            future = self._future_latents(latents, b)
        # (2) Video Former over every view's block features
        video = self.video_proj(self.video_former(feats))  # [(b v), f*q, d]
        video = rearrange(video, "(b v) n d -> b (v n) d", b=b)
        # (3) MLP: the chosen view's predicted future -> the GIDM's future patch tokens
        future = future.float()
        if self.unshuffle:
            future = F.pixel_unshuffle(future, self.unshuffle)
        else:
            future = F.adaptive_avg_pool2d(future, self.grid)
        if "current_tokens" in cached:
            current_tokens = cached["current_tokens"].float()
        else:
            with torch.no_grad():
                current_tokens = self.frame_encoder().to(images.device)(images[:, cfg.gidm_view])
        future_tokens = current_tokens + self.future_mlp(rearrange(future, "b c h w -> b (h w) c"))
        # (4) the GIDM's encoder: latent actions from (e_t, projected future, instruction)
        text_tokens = text_mask = None
        if cfg.inverse.text_dim:
            emb = self.text_encoder(cfg.inverse_text).encode(instructions)
            text_tokens, text_mask = emb.tokens.to(images.device), emb.mask.to(images.device)
        latent_actions, _ = self.gidm.infer_latent_actions(current_tokens, future_tokens, text_tokens, text_mask)
        tokens = torch.cat([self.latent_action_proj(latent_actions), video], dim=1)
        # (5) global condition: pooled instruction (+ normalised state)
        pooled = self.text_encoder(cfg.adapter_text).encode(instructions).pooled.to(images.device)
        if self.state_normalizer is not None:
            if state is None:
                raise DefiError(f"observation.state: this policy needs a {cfg.state_dim}-dim proprio state")
            pooled = torch.cat([pooled, self.state_normalizer.normalize(state.float())], dim=-1)
        return tokens, pooled

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The trainer's contract on a clip batch: masked denoising loss of the normalised action chunk."""
        actions = self.action_normalizer.normalize(batch["actions"].float())
        cached = {key[len("cache."):]: value for key, value in batch.items() if key.startswith("cache.")}
        tokens, global_cond = self.condition(batch["images"], batch["instruction"], batch.get("state"), cached=cached)
        mask = batch["action_mask"].bool()
        return self.adapter.loss(actions, mask, tokens, global_cond)

    @torch.no_grad()
    def predict_actions(self, images: torch.Tensor, instructions: Sequence[str], state: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, keep_imagination: bool = False) -> torch.Tensor:
        """Unnormalised action chunks [B, Ha, A] from uint8 images [B, V, 3, H, W]."""
        tokens, global_cond = self.condition(images, instructions, state, keep_imagination)
        return self.action_normalizer.unnormalize(self.adapter.sample(tokens, global_cond, generator=generator))

    # ------------------------------------------------------------------------------------------ Policy API
    @property
    def metadata(self) -> dict[str, Any]:
        cfg = self.config
        return {"policy_type": "defi", "cameras": list(cfg.cameras), "image_size": cfg.image_size,
                "action_dim": cfg.action_dim, "action_horizon": cfg.action_horizon, "state_dim": cfg.state_dim,
                "sampling_steps": cfg.adapter.num_sampling_steps}

    def reset(self) -> None:
        self._imagined = None
        self._last_current = None

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        images, state = observation_to_tensors(observation, self.config.cameras, self.config.image_size,
                                               self.config.state_dim, self._device())
        self.eval()
        chunk = self.predict_actions(images, [instruction], state, keep_imagination=True)
        return chunk[0].float().cpu().numpy()

    def imagined_frames(self) -> np.ndarray | None:
        """The GFDM's one-step future of the first camera at the last `act`, uint8 [F, H, W, 3]."""
        if self._imagined is None:
            return None
        v = len(self.config.cameras)
        with torch.no_grad():
            frames = self.gfdm.decode_latents(self._imagined[::v][:1], to_unit_range(self._last_current[:, 0]))
        return rearrange(to_uint8(frames[0]), "f c h w -> f h w c").cpu().numpy()


def observation_to_tensors(observation: Mapping[str, Any], cameras: Sequence[str], image_size: int, state_dim: int,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Policy API observation -> (uint8 [1, V, 3, H, W], float [1, S] or None), with errors naming the key."""
    views = []
    for cam in cameras:
        key = f"observation.images.{cam}"
        if key not in observation:
            raise DefiError(f"observation is missing {key!r} (this policy uses cameras {list(cameras)})")
        img = np.asarray(observation[key])
        if img.dtype != np.uint8 or img.shape != (image_size, image_size, 3):
            raise DefiError(f"{key}: expected uint8 [{image_size}, {image_size}, 3], got {img.dtype} {list(img.shape)}")
        views.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
    images = torch.stack(views).unsqueeze(0).to(device)
    state = None
    if state_dim:
        if "observation.state" not in observation:
            raise DefiError(f"observation is missing 'observation.state' (this policy needs {state_dim} values)")
        raw = np.asarray(observation["observation.state"], dtype=np.float32).reshape(-1)
        if raw.shape[0] != state_dim:
            raise DefiError(f"observation.state: expected {state_dim} values, got {raw.shape[0]}")
        state = torch.from_numpy(raw).unsqueeze(0).to(device)
    return images, state
