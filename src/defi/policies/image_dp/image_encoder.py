"""A small ResNet-style image encoder that turns camera frames into condition tokens for the DiT adapter.

Written in plain torch because torchvision is not available in this project's environment. Like Diffusion
Policy's vision encoder it uses GroupNorm instead of BatchNorm (batch statistics misbehave with EMA weights and
small batches) and random-shift augmentation during training (DrQ: pad by a few pixels, crop back at a random
offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from defi.config import Config
from defi.models.layers.augment import random_shift


@dataclass
class ImageEncoderConfig(Config):
    channels: tuple[int, ...] = (32, 64, 128, 256)  # one stage each; every stage after the first halves h and w
    blocks_per_stage: int = 1
    token_grid: int = 4  # the last feature map is average-pooled to token_grid x token_grid tokens per view
    random_shift: int = 4  # training-time augmentation: max shift in pixels (0 = off)

    def validate(self) -> None:
        self.check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
                   "a non-empty list of positive integers")
        self.check(self.blocks_per_stage >= 1, "blocks_per_stage", "an integer >= 1")
        self.check(self.token_grid >= 1, "token_grid", "an integer >= 1")
        self.check(self.random_shift >= 0, "random_shift", "an integer >= 0")

    @property
    def out_dim(self) -> int:
        return self.channels[-1]

    @property
    def tokens_per_view(self) -> int:
        return self.token_grid**2


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), GroupNorm in place of BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.skip = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _group_norm(out_channels))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.skip(x))


class ConvImageEncoder(nn.Module):
    """Frames [N, 3, H, W] in [-1, 1] -> tokens [N, token_grid**2, channels[-1]]."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        first = config.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, first, 3, stride=2, padding=1, bias=False), _group_norm(first), nn.ReLU()
        )
        blocks = []
        in_channels = first
        for stage, channels in enumerate(config.channels):
            for index in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(config.token_grid)

    def forward(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.training:
            frames = random_shift(frames, self.config.random_shift, generator)
        features = self.pool(self.blocks(self.stem(frames)))
        return rearrange(features, "n c gh gw -> n (gh gw) c")
