"""Configuration of the General Inverse Dynamics Model (paper §3.2, appendix A.3, Algorithm 1) and its presets.

The config records the model's inputs as well as its sizes (diffusers' habit: a saved config rebuilds the model
and what feeds it): the frozen frame encoder, the text encoder and the camera the GIDM was pretrained on. The
policy reads them from the saved GIDM instead of from the pretraining run's stage config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from defi.config import Config, preset, replace
from defi.models.encoders.frame import FrameEncoderConfig
from defi.models.encoders.text import TextEncoderConfig


@dataclass
class QuantizerConfig(Config):
    # vq: VQ-VAE codebook (the paper); binning: per-dimension uniform bins (Table 8 "S.B");
    # continuous: no bottleneck (Table 8 "C.L.A"); fsq: finite scalar quantisation (Mentzer et al. 2023), a few
    # bounded dimensions rounded to `levels` each, whose joint value is one code of an implied codebook
    kind: Literal["vq", "binning", "fsq", "continuous"] = "vq"
    codebook_size: int = 128  # |C| (paper Table 10)
    code_dim: int = 32  # the query outputs are projected to this size before the lookup (factorised codes)
    # look codes up by cosine similarity (l2-normalised vectors and codes, as in ViT-VQGAN): keeps more codes in use
    normalize: bool = False
    commitment_weight: float = 0.25  # beta of the VQ-VAE loss (van den Oord et al. 2017)
    # ema: codebook moves to the running mean of its assigned vectors; loss: codebook loss term, optimised
    update: Literal["ema", "loss"] = "ema"
    ema_decay: float = 0.99
    # a code whose running assignment count per batch falls below this is dead and re-initialised from the batch
    dead_code_threshold: float = 0.1
    num_bins: int = 8  # binning only
    # fsq only: levels per dimension; the query outputs are projected to len(levels) dims (code_dim is not used) and
    # the implied codebook has prod(levels) codes: (8, 5, 5, 5) is the FSQ paper's choice for about 2^10 codes
    levels: tuple[int, ...] = (8, 5, 5, 5)
    # fsq only: standardise each dimension over the batch before the bound (running statistics at inference), as
    # BN-VAE (Zhu et al. 2020) does against posterior collapse: the encoder cannot shrink every latent into one level
    standardize: bool = False

    @property
    def latent_dim(self) -> int:
        """Size of the projected query output that the bottleneck quantises."""
        return len(self.levels) if self.kind == "fsq" else self.code_dim

    @property
    def num_codes(self) -> int | None:
        """Codes a query can take (one id per query), None where codes are not single ids (binning, continuous)."""
        if self.kind == "vq":
            return self.codebook_size
        if self.kind == "fsq":
            return math.prod(self.levels)
        return None

    def validate(self) -> None:
        self.check(self.codebook_size >= 2, "codebook_size", "at least 2 codes")
        self.check(self.code_dim >= 1, "code_dim", "a positive dimension")
        self.check(self.commitment_weight >= 0, "commitment_weight", "a non-negative weight")
        self.check(0.0 < self.ema_decay < 1.0, "ema_decay", "a value in (0, 1)")
        self.check(self.dead_code_threshold >= 0, "dead_code_threshold", "a non-negative count")
        self.check(self.num_bins >= 2, "num_bins", "at least 2 bins")
        self.check(len(self.levels) >= 1 and all(n >= 2 for n in self.levels), "levels",
                   "one or more levels per dimension, each at least 2")


@dataclass
class GIDMConfig(Config):
    # inputs: which frozen encoders and camera produce them ...
    camera: str = "corner"
    """The camera view the GIDM sees (it is pretrained on one view)."""
    frame_encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # ... and their sizes (filled from the encoders by `with_encoder_dims`)
    feature_dim: int = 256  # D of the frame encoder's patch tokens
    num_patches: int = 16  # P patch tokens per frame
    text_dim: int = 384  # D of the text encoder's tokens; 0 = no instruction input
    # st_transformer: the paper's GIDM; transformer / mlp: the continuous baselines of Table 7
    architecture: Literal["st_transformer", "transformer", "mlp"] = "st_transformer"
    dim: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_action_queries: int = 4  # N learnable action queries (not given in the paper)
    decoder_depth: int = 2  # spatial-transformer decoder layers (not given in the paper)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def validate(self) -> None:
        self.check(self.feature_dim >= 1, "feature_dim", "a positive feature dimension")
        self.check(self.num_patches >= 1, "num_patches", "at least one patch token")
        self.check(self.text_dim >= 0, "text_dim", "0 (no text) or the text encoder's dimension")
        self.check(self.dim >= 1, "dim", "a positive model width")
        self.check(self.heads >= 1 and self.dim % self.heads == 0, "heads", f"a divisor of dim={self.dim}")
        self.check(self.depth >= 1, "depth", "at least one layer")
        self.check(self.decoder_depth >= 1, "decoder_depth", "at least one layer")
        self.check(self.mlp_ratio > 0, "mlp_ratio", "a positive ratio")
        self.check(0.0 <= self.dropout < 1.0, "dropout", "a probability in [0, 1)")
        self.check(self.num_action_queries >= 1, "num_action_queries", "at least one action query")
        self.check(bool(self.camera), "camera", "a camera name")

    def with_encoder_dims(self, frame_dim: int, num_patches: int, text_dim: int) -> GIDMConfig:
        """A copy whose input sizes are those the encoders give (text_dim stays 0 when the instruction is off)."""
        return replace(self, feature_dim=frame_dim, num_patches=num_patches, text_dim=text_dim if self.text_dim else 0)


@preset(GIDMConfig, "tiny")
def _tiny() -> GIDMConfig:
    return GIDMConfig(
        frame_encoder=FrameEncoderConfig(kind="patch", image_size=32, patch_size=8, dim=16),
        text_encoder=TextEncoderConfig(kind="minilm", max_length=16),
        feature_dim=16, num_patches=16, text_dim=384, dim=32, depth=2, heads=2, num_action_queries=2,
        decoder_depth=1, quantizer=QuantizerConfig(codebook_size=16, code_dim=8),
    )


@preset(GIDMConfig, "small")
def _small() -> GIDMConfig:
    # sized for a shared 2-core CPU: 4 x 4 patch tokens of 64 x 64 frames, a 128-wide 3-layer GIDM
    return GIDMConfig(frame_encoder=FrameEncoderConfig(kind="patch", image_size=64, patch_size=16, dim=256),
                      text_encoder=TextEncoderConfig(kind="minilm", max_length=16))


@preset(GIDMConfig, "paper")
def _paper() -> GIDMConfig:
    # DINOv2 ViT-B/14 at 224 px (16 x 16 patches, D=768), T5-base text (D=768), GIDM 768 x 16 layers, 128 codes
    return GIDMConfig(
        camera="static",
        frame_encoder=FrameEncoderConfig(kind="dinov2", image_size=224),
        text_encoder=TextEncoderConfig(kind="t5"),
        feature_dim=768, num_patches=256, text_dim=768, dim=768, depth=16, heads=12, num_action_queries=4,
        decoder_depth=8, quantizer=QuantizerConfig(codebook_size=128, code_dim=32),
    )


def table7_variant(base: GIDMConfig, name: Literal["gidm", "mlp", "transformer"]) -> GIDMConfig:
    """Paper Table 7: the GIDM, an MLP IDM, or a plain continuous transformer IDM (both without VQ)."""
    if name == "gidm":
        return base
    quant = replace(base.quantizer, kind="continuous")
    return replace(base, architecture=name, quantizer=quant)


def table8_variant(base: GIDMConfig, name: Literal["vq", "binning", "fsq", "continuous"]) -> GIDMConfig:
    """Paper Table 8: VQ-VAE codes, simple binning, or a continuous latent action (Gaussian mixture not built); and
    FSQ, which the paper does not test."""
    return replace(base, quantizer=replace(base.quantizer, kind=name))
