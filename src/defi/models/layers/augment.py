"""Training-time image augmentation shared by the policies.

Written in plain torch because torchvision is not available in this project's environment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image [N, C, H, W] by up to `pad` pixels (replicate-padded borders), DrQ-style."""
    if pad == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    rng_device = generator.device if generator is not None else images.device
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=rng_device).to(images.device)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # [N, H]
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # [N, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return shifted.permute(0, 3, 1, 2)
