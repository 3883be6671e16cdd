"""Typed config of the General Forward Dynamics Model (paper §3.1, appendix A.3) and its presets.

Two backends share one model class (`ForwardDynamicsModel`):
- `svd`: the paper's backbone, diffusers' `UNetSpatioTemporalConditionModel` + `AutoencoderKLTemporalDecoder`
  (Stable Video Diffusion), optionally initialised from pretrained SVD weights;
- `compact`: the CPU default, a small `UNetSpatioTemporalConditionModel` over a fixed, lossless space-to-depth
  "latent" of the pixels (see `latent.py` for why no VAE is learnt there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from defi.config import Config, preset
from defi.models.encoders.text import TextEncoderConfig

# Names of denoiser blocks whose outputs one-step feature extraction can return.
FEATURE_LAYER_PREFIXES = ("down_blocks.", "up_blocks.")
FEATURE_LAYER_NAMES = ("mid_block",)


@dataclass
class UNetConfig(Config):
    """Mirrors the arguments of diffusers' `UNetSpatioTemporalConditionModel` (defaults: SVD-xt's unet)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    )
    layers_per_block: int = 2
    num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    transformer_layers_per_block: int = 1
    addition_time_embed_dim: int = 256

    def validate(self) -> None:
        n = len(self.block_out_channels)
        self.check(n >= 1, "block_out_channels", "at least one block")
        self.check(len(self.down_block_types) == n, "down_block_types", f"{n} entries (one per block_out_channels)")
        self.check(len(self.up_block_types) == n, "up_block_types", f"{n} entries (one per block_out_channels)")
        self.check(len(self.num_attention_heads) == n, "num_attention_heads", f"{n} entries (one per block)")
        self.check(
            all(c % h == 0 for c, h in zip(self.block_out_channels, self.num_attention_heads)),
            "num_attention_heads",
            f"heads that divide block_out_channels {self.block_out_channels}",
        )
        self.check(
            all(c % 32 == 0 for c in self.block_out_channels),
            "block_out_channels",
            "multiples of 32 (the UNet's GroupNorm uses 32 groups)",
        )
        self.check(self.layers_per_block >= 1, "layers_per_block", "a positive integer")
        self.check(self.cross_attention_dim >= 1, "cross_attention_dim", "a positive integer")
        self.check(self.addition_time_embed_dim % 2 == 0, "addition_time_embed_dim", "an even integer")


@dataclass
class VaeConfig(Config):
    """`svd` backend only: mirrors diffusers' `AutoencoderKLTemporalDecoder` (defaults: SVD's vae)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    scaling_factor: float = 0.18215

    def validate(self) -> None:
        self.check(len(self.block_out_channels) >= 1, "block_out_channels", "at least one block")
        self.check(all(c % 32 == 0 for c in self.block_out_channels), "block_out_channels", "multiples of 32")
        self.check(self.latent_channels >= 1, "latent_channels", "a positive integer")
        self.check(self.scaling_factor > 0, "scaling_factor", "a positive number")


@dataclass
class NoiseConfig(Config):
    """Noise schedule of eq. (1), training target of eq. (3), and the multi-step sampler (diffusers schedulers)."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # eq. (3) predicts the noise ("epsilon", or "v_prediction"); "sample" predicts z^(0) itself, which the compact
    # backend needs: its 192-channel space-to-depth latents pass a 32-wide UNet, too narrow to output per-pixel
    # noise at low noise levels (measured: v-prediction plateaued at loss 0.5 and left visible noise in samples)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    # rescale the betas so that the last training timestep is pure noise (Lin et al. 2024, "Common Diffusion Noise
    # Schedules and Sample Steps are Flawed"). scaled_linear leaves sqrt(alpha_bar) = 0.068 of the target in the
    # noisiest training input, while the one-step features start from noise alone: measured on the `small` GFDM,
    # its x0 estimate at that step was 0.52x the zero-motion error with the leaked target in the input and 0.88x
    # without it, so it had learnt to read the leak instead of the current frame. Needs a prediction type that
    # does not divide by the signal at zero SNR ("sample" or "v_prediction")
    zero_terminal_snr: bool = False
    sampler: Literal["ddim", "euler", "ddpm"] = "ddim"
    sample_steps: int = 20
    # share of training samples drawn at the one-step features' timestep instead of uniformly: the policy reads the
    # model at that single step only (paper §3.1, Q3), and with uniform sampling it gets 1 / num_train_timesteps of
    # the training signal; the rest keeps training the multi-step sampler
    one_step_fraction: float = 0.0

    def validate(self) -> None:
        self.check(self.num_train_timesteps >= 2, "num_train_timesteps", "at least 2")
        self.check(0.0 <= self.one_step_fraction <= 1.0, "one_step_fraction", "a fraction in [0, 1]")
        self.check(0 < self.beta_start < self.beta_end < 1, "beta_start", "0 < beta_start < beta_end < 1")
        self.check(not (self.zero_terminal_snr and self.prediction_type == "epsilon"), "zero_terminal_snr",
                   "false with prediction_type 'epsilon' (at zero SNR the noise says nothing about the sample); use "
                   "'sample' or 'v_prediction'")
        self.check(1 <= self.sample_steps <= self.num_train_timesteps, "sample_steps",
                   f"between 1 and num_train_timesteps={self.num_train_timesteps}")


@dataclass
class FeatureConfig(Config):
    """One-step feature extraction (paper §3.1): which denoiser blocks to read after a single denoising step."""

    layers: tuple[str, ...] = ("mid_block", "up_blocks.0")
    # diffusion timestep of the single step; -1 = the noisiest training timestep (where sampling starts)
    timestep: int = -1
    # the starting noise is drawn once from this seed and shared by every sample, so that features (and hence
    # actions) are deterministic and independent of batch size and position
    seed: int = 0

    def validate(self) -> None:
        self.check(len(self.layers) >= 1, "layers", "at least one layer name")
        for name in self.layers:
            ok = name in FEATURE_LAYER_NAMES or (
                name.startswith(FEATURE_LAYER_PREFIXES) and name.split(".", 1)[1].isdigit()
            )
            self.check(ok, "layers", f"names like 'mid_block', 'down_blocks.<i>', 'up_blocks.<i>' (got {name!r})")
        self.check(self.timestep >= -1, "timestep", "-1 (noisiest) or a training timestep >= 0")


@dataclass
class ForwardDynamicsConfig(Config):
    backend: Literal["compact", "svd"] = "compact"
    image_size: int = 64
    # predicted future frames o_{t+k*stride}, k = 1..num_frames (the stride belongs to the data config)
    num_frames: int = 4
    # compact: side of the pixel blocks folded into channels (64x64x3 with 4 -> 16x16x48 latents)
    latent_downsample: int = 4
    # "residual" diffuses z_{t+k} - z_t (copying the current frame is the zero prediction, so every update
    # learns motion); "frames" diffuses z_{t+k} itself as SVD does (required to reuse pretrained SVD weights)
    target: Literal["frames", "residual"] = "residual"
    # multiplies the diffused latents so that their std is near 1 (the role of a VAE's scaling_factor)
    latent_scale: float = 1.0
    # svd: local directory or hub repo id in SVD's layout (unet/, vae/), read offline; "" = random init
    pretrained: str = ""
    # SVD's micro-conditioning (fps, motion_bucket_id, noise_aug_strength), fixed here
    added_time_ids: tuple[float, float, float] = (6.0, 127.0, 0.02)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # width of the text encoder's tokens (MiniLM 384, CLIP ViT-L/14 text 768), input of the learnt projection
    text_dim: int = 384

    def validate(self) -> None:
        self.check(self.text_dim >= 1, "text_dim", "a positive token width")
        self.check(self.num_frames >= 1, "num_frames", "a positive number of predicted frames")
        self.check(self.latent_scale > 0, "latent_scale", "a positive number")
        if self.backend == "compact":
            self.check(self.latent_downsample >= 1 and self.image_size % self.latent_downsample == 0,
                       "latent_downsample", f"a positive divisor of image_size={self.image_size}")
            self.check(not self.pretrained, "pretrained", "'' for the compact backend (pretrained weights are SVD's)")
            side = self.image_size // self.latent_downsample
        else:
            factor = 2 ** (len(self.vae.block_out_channels) - 1)
            self.check(self.image_size % factor == 0, "image_size",
                       f"a multiple of {factor} (the VAE downsamples by {factor})")
            side = self.image_size // factor
        unet_factor = 2 ** (len(self.unet.block_out_channels) - 1)
        self.check(side % unet_factor == 0, "image_size",
                   f"latents of side {side} divisible by {unet_factor} (the UNet's downsampling)")
        num_blocks = len(self.unet.block_out_channels)
        for name in self.features.layers:
            if "." in name:
                self.check(int(name.split(".")[1]) < num_blocks, "features",
                           f"layer indices below {num_blocks} (got {name!r})")

    def feature_channels(self) -> dict[str, int]:
        """Channel width of each configured feature layer (what a Video Former's input projections need)."""
        widths = list(self.unet.block_out_channels)
        out = {}
        for name in self.features.layers:
            if name == "mid_block":
                out[name] = widths[-1]
            else:
                kind, index = name.split(".")
                out[name] = widths[int(index)] if kind == "down_blocks" else widths[::-1][int(index)]
        return out

    @property
    def latent_side(self) -> int:
        if self.backend == "compact":
            return self.image_size // self.latent_downsample
        return self.image_size // 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        if self.backend == "compact":
            return 3 * self.latent_downsample**2
        return self.vae.latent_channels


@preset(ForwardDynamicsConfig, "tiny")
def _tiny() -> ForwardDynamicsConfig:
    """Tests: 32x32, 2 frames, 16x16x12 latents, a two-level UNet with 32/64 channels."""
    return ForwardDynamicsConfig(
        backend="compact",
        image_size=32,
        num_frames=2,
        latent_downsample=2,
        latent_scale=2.0,
        unet=UNetConfig(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            layers_per_block=1,
            num_attention_heads=(2, 4),
            cross_attention_dim=64,
            addition_time_embed_dim=16,
        ),
        noise=NoiseConfig(num_train_timesteps=100, sample_steps=5),
        features=FeatureConfig(layers=("mid_block", "up_blocks.0")),
    )


@preset(ForwardDynamicsConfig, "tiny-svd")
def _tiny_svd() -> ForwardDynamicsConfig:
    """Tests of the svd backend: SVD's classes at toy widths, 32x32 frames, 2 predicted frames."""
    cfg = _tiny()
    cfg.backend = "svd"
    cfg.target = "frames"
    cfg.latent_scale = 1.0
    cfg.vae = VaeConfig(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4)
    return cfg


@preset(ForwardDynamicsConfig, "small")
def _small() -> ForwardDynamicsConfig:
    """The CPU default: Meta-World 64x64 frames, 4 future frames, 8x8x192 latents, a 1.6M-parameter UNet.

    Sized by measurement on the 2-core CPU (one thread, batch 8): 8x8 latents with widths (32, 64) train at
    ~1.3 s/step, 16x16 latents at the same widths at ~4.5 s/step, widths (64, 128) at 8x8 at ~4 s/step.
    latent_scale 5 brings Meta-World's residuals (pixel std ~0.06-0.14 at 3-12 control steps) near unit std.
    """
    return ForwardDynamicsConfig(
        backend="compact",
        image_size=64,
        num_frames=4,
        latent_downsample=8,
        latent_scale=5.0,
        unet=UNetConfig(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            layers_per_block=1,
            num_attention_heads=(1, 2),
            cross_attention_dim=64,
            addition_time_embed_dim=32,
        ),
        # zero terminal SNR and half the samples at the one-step timestep: on the study corpus at 2000 steps the
        # one-step future went from 0.864x to 0.627x the MSE of copying the current frame (moving clips 0.850 ->
        # 0.585; studies/issue13/README.md), the sampled one from 0.824x to 0.717x
        noise=NoiseConfig(num_train_timesteps=1000, prediction_type="sample", sample_steps=20,
                          zero_terminal_snr=True, one_step_fraction=0.5),
        features=FeatureConfig(layers=("mid_block", "up_blocks.0")),
    )


@preset(ForwardDynamicsConfig, "paper")
def _paper() -> ForwardDynamicsConfig:
    """Appendix A.3: Stable Video Diffusion (img2vid-xt) at 256x256, 16 predicted frames, CLIP text conditioning."""
    return ForwardDynamicsConfig(
        backend="svd",
        image_size=256,
        num_frames=16,
        target="frames",
        latent_scale=1.0,
        pretrained="stabilityai/stable-video-diffusion-img2vid-xt",
        unet=UNetConfig(),
        vae=VaeConfig(),
        noise=NoiseConfig(prediction_type="v_prediction", sampler="euler", sample_steps=20),
        features=FeatureConfig(layers=("up_blocks.1", "up_blocks.2")),
        text_encoder=TextEncoderConfig(kind="clip", name_or_path="openai/clip-vit-large-patch14", max_length=77),
        text_dim=768,
    )

