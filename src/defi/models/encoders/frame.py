"""Frozen frame encoders: uint8 images [B, 3, h, w] -> patch tokens [B, P, D].

Two kinds behind one interface (`build_frame_encoder(FrameEncoderConfig)`):

- `dinov2` (paper): transformers' `Dinov2Model`, patch tokens of the last layer (the CLS token is dropped),
  loaded offline from a local directory or the Hugging Face hub cache (`local_files_only=True`).
- `patch` (CPU default): a fixed random orthogonal projection of non-overlapping pixel patches. We chose it
  over a self-supervised conv encoder or the GFDM's VAE because it needs no training run, no download and no
  other stage, costs one matmul at 64x64, and (being an orthogonal, hence distance-preserving, map of the
  pixels of each patch) keeps every pixel change visible: MSE in this space is pixel-patch MSE, so predicting
  the future frame's features is a meaningful proxy task on the small simulator images where only the arm and
  the objects move. Its weights are a function of `seed`, so the config alone rebuilds it exactly.

Both are frozen (`requires_grad=False`, always in eval mode) and never saved with the models that use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from defi.config import Config
from defi.errors import CheckpointError, ShapeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DINOV2 = "facebook/dinov2-base"  # ViT-B/14, D=768 (paper)


@dataclass
class FrameEncoderConfig(Config):
    kind: Literal["patch", "dinov2"] = "patch"
    name_or_path: str = ""
    """dinov2: local directory or hub repo id (read from the hub cache only); "" = facebook/dinov2-base."""
    image_size: int = 64
    """Frames are resized to image_size x image_size first (dinov2: a multiple of its patch size, 224 at paper)."""
    patch_size: int = 16
    """patch: side of the pixel patches (64 / 16 = a 4 x 4 grid of tokens)."""
    dim: int = 256
    """patch: output dimension D."""
    seed: int = 0
    """patch: seed of the fixed projection."""

    def validate(self) -> None:
        self.check(self.image_size >= 1, "image_size", "a positive number of pixels")
        self.check(self.patch_size >= 1, "patch_size", "a positive number of pixels")
        if self.kind == "patch":
            self.check(
                self.image_size % self.patch_size == 0, "image_size", f"a multiple of patch_size={self.patch_size}"
            )
            self.check(self.dim >= 1, "dim", "a positive feature dimension")


class FrameEncoder(nn.Module):
    """Common frozen behaviour; subclasses implement `_encode(float images in [0, 1]) -> [B, P, D]`."""

    config: FrameEncoderConfig
    dim: int
    num_patches: int
    grid: tuple[int, int]  # patch rows, cols (P = rows * cols), used to draw attention maps

    def train(self, mode: bool = True) -> "FrameEncoder":
        return super().train(False)  # frozen feature extractor: dropout etc. stay off

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ShapeError(f"frame encoder: expected images [B, 3, h, w], got {list(images.shape)}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        pixels = images.to(next(self.buffers()).device)
        pixels = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self._encode(pixels)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PatchProjectionEncoder(FrameEncoder):
    def __init__(self, config: FrameEncoderConfig):
        super().__init__()
        self.config = config
        p = config.patch_size
        in_dim = 3 * p * p
        gen = torch.Generator().manual_seed(config.seed)
        # orthonormal columns (dim <= in_dim) or rows (dim > in_dim): distances between patches are kept exactly
        # when dim >= in_dim and in expectation (Johnson-Lindenstrauss, with the sqrt scale) otherwise
        if config.dim <= in_dim:
            q, _ = torch.linalg.qr(torch.randn(in_dim, config.dim, generator=gen))
            proj = q * math.sqrt(in_dim / config.dim)
        else:
            q, _ = torch.linalg.qr(torch.randn(config.dim, in_dim, generator=gen))
            proj = q.T
        self.register_buffer("projection", proj.contiguous(), persistent=False)  # [in_dim, dim]
        self.dim = config.dim
        side = config.image_size // p
        self.grid = (side, side)
        self.num_patches = side * side

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        patches = rearrange(pixels * 2.0 - 1.0, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p)
        return patches @ self.projection


class Dinov2Encoder(FrameEncoder):
    def __init__(self, config: FrameEncoderConfig, model: nn.Module):
        super().__init__()
        self.config = config
        self.model = model.eval().requires_grad_(False)
        patch = int(model.config.patch_size)
        if config.image_size % patch:
            raise CheckpointError(
                f"frame_encoder.image_size={config.image_size}: expected a multiple of the DINOv2 patch size {patch}"
            )
        self.dim = int(model.config.hidden_size)
        side = config.image_size // patch
        self.grid = (side, side)
        self.num_patches = side * side
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=(pixels - self.mean) / self.std)
        # last_hidden_state = [CLS, (registers,) patches]; keep the patch tokens
        return out.last_hidden_state[:, -self.num_patches :].float()


def build_frame_encoder(config: FrameEncoderConfig, device: str | torch.device = "cpu") -> FrameEncoder:
    """Build a frozen frame encoder; `dinov2` reads weights offline and raises CheckpointError when absent."""
    if config.kind == "patch":
        return PatchProjectionEncoder(config).to(device)
    from transformers import Dinov2Model

    name = config.name_or_path or DEFAULT_DINOV2
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser())
    try:
        model = Dinov2Model.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"frame encoder dinov2 {name!r} could not be loaded offline ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Expected a local directory with config.json and weights, or the repo "
            f"in the Hugging Face hub cache (fetch it on a machine with internet: `hf download {name}`)"
        ) from None
    return Dinov2Encoder(config, model).to(device)
