"""Configuration of the coupled DeFI policy (paper §3.3-3.4, Table 9, Table 10) and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from defi.config import preset, replace, validate_config
from defi.models.adapter import ActionAdapterConfig
from defi.models.encoders import TextEncoderConfig
from defi.models.forward import ForwardDynamicsConfig, VideoFormerConfig, video_former_config
from defi.models.inverse import GIDMConfig
from defi.policies.base import NormalizationMode, PolicyConfig

Trainable = Literal["adapter", "gfdm+adapter", "gidm+adapter", "all"]


@dataclass
class DeFIConfig(PolicyConfig):
    type_name: ClassVar[str] = "defi"
    future_frame: int = -1
    """Which of the GFDM's predicted frames the MLP maps to the GIDM's o_{t+n}."""
    projector_hidden: int = 512
    fused_dim: int = 128
    """Width of the adapter's condition tokens."""
    trainable: Trainable = "gidm+adapter"
    """Which parts finetune (paper Table 9); the MLP, Video Former and adapter always train."""
    gfdm_feature_layers: tuple[str, ...] = ()
    """The GFDM blocks whose one-step outputs the Video Former reads (e.g. "mid_block", "up_blocks.1"); empty = the
    GFDM config's own `features.layers`. Set here, it also applies to a pretrained GFDM (block outputs are read,
    not trained, so any block of the pretrained UNet can be chosen at finetuning)."""
    random_shift: int = 0
    """Training-time augmentation: each camera frame is shifted by up to this many pixels (DrQ, as the image
    diffusion policy does) before every part sees it. 0 = off. On, the frozen parts' outputs change every step, so
    finetuning computes them each step instead of caching them once per clip."""
    action_normalization: NormalizationMode = "min_max"
    forward: ForwardDynamicsConfig = field(default_factory=lambda: ForwardDynamicsConfig.preset("small"))
    inverse: GIDMConfig = field(default_factory=lambda: GIDMConfig.preset("small"))
    """The GIDM, with the frame encoder, text encoder and camera it was pretrained on."""
    adapter_text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The instruction encoder of the adapter's global condition (CLIP at paper scale)."""
    adapter_text_dim: int = 384
    video_former: VideoFormerConfig = field(default_factory=VideoFormerConfig)
    adapter: ActionAdapterConfig = field(default_factory=lambda: ActionAdapterConfig.preset("small"))
    """cond_dim / num_cond_tokens / global_cond_dim follow from the fields above: leave them null."""

    def validate(self) -> None:
        super().validate()
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")
        self.check(self.inverse.camera in self.cameras, "inverse",
                   f"a GIDM camera among the policy's cameras {list(self.cameras)} (got {self.inverse.camera!r})")
        self.check(self.image_size == self.forward.image_size, "image_size",
                   f"the GFDM's image size ({self.forward.image_size})")
        self.check(self.action_dim == self.adapter.action_dim, "action_dim", f"adapter.action_dim ({self.adapter.action_dim})")
        self.check(self.action_horizon == self.adapter.action_horizon, "action_horizon",
                   f"adapter.action_horizon ({self.adapter.action_horizon})")
        self.check(-self.forward.num_frames <= self.future_frame < self.forward.num_frames, "future_frame",
                   f"an index into the GFDM's {self.forward.num_frames} predicted frames")
        self.check(self.fused_dim >= 1 and self.projector_hidden >= 1, "fused_dim", "positive widths")
        self.check(self.random_shift >= 0, "random_shift", "an integer >= 0 (pixels)")
        widths = self.forward.feature_channels()
        for name, width in zip(self.video_former.layers, self.video_former.in_channels):
            self.check(widths.get(name) == width, "video_former",
                       f"inputs matching the GFDM's feature layers {widths} (layer {name!r}: {width})")

    @property
    def gidm_view(self) -> int:
        """Index (into `cameras`) of the view the GIDM sees."""
        return self.cameras.index(self.inverse.camera)

    def with_forward(self, forward: ForwardDynamicsConfig) -> DeFIConfig:
        """A copy built around another GFDM (e.g. a pretrained one): the Video Former reads its feature layers, or
        `gfdm_feature_layers` when set."""
        if self.gfdm_feature_layers:
            forward = replace(forward, features=replace(forward.features, layers=tuple(self.gfdm_feature_layers)))
            validate_config(forward)
        vf = video_former_config(forward)
        return replace(self, forward=forward, video_former=replace(
            self.video_former, layers=vf.layers, in_channels=vf.in_channels, num_frames=vf.num_frames))


def _config(forward: ForwardDynamicsConfig, inverse: GIDMConfig, former: dict, adapter: ActionAdapterConfig,
            **fields) -> DeFIConfig:
    cfg = DeFIConfig(forward=forward, inverse=inverse, adapter=adapter, image_size=forward.image_size,
                     action_dim=adapter.action_dim, action_horizon=adapter.action_horizon,
                     video_former=video_former_config(forward, **former), **fields)
    validate_config(cfg)
    return cfg


@preset(DeFIConfig, "tiny")
def _tiny() -> DeFIConfig:
    return _config(ForwardDynamicsConfig.preset("tiny"), GIDMConfig.preset("tiny"),
                   dict(dim=32, num_queries=2, depth=1, heads=2),
                   replace(ActionAdapterConfig.preset("tiny"), action_horizon=4), projector_hidden=32, fused_dim=32)


@preset(DeFIConfig, "small")
def _small() -> DeFIConfig:
    return _config(ForwardDynamicsConfig.preset("small"), GIDMConfig.preset("small"),
                   dict(dim=128, num_queries=4, depth=1, heads=4),
                   replace(ActionAdapterConfig.preset("small"), action_horizon=8))


@preset(DeFIConfig, "paper")
def _paper() -> DeFIConfig:
    return _config(
        ForwardDynamicsConfig.preset("paper"), GIDMConfig.preset("paper"), dict(dim=384, num_queries=8, depth=2, heads=6),
        ActionAdapterConfig.preset("paper"), cameras=("static", "gripper"), state_dim=0, projector_hidden=1024,
        fused_dim=384, adapter_text=TextEncoderConfig(kind="clip", name_or_path="openai/clip-vit-large-patch14",
                                                      max_length=77),
        adapter_text_dim=768)

