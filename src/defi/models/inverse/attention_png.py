"""Draw the action queries' attention over image patches (paper Fig. 12) into a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def save_attention_png(
    path: str | Path,
    current_images: torch.Tensor,
    future_images: torch.Tensor,
    attention: torch.Tensor,
    grid: tuple[int, int],
    titles: list[str] | None = None,
) -> Path:
    """current/future_images uint8 [B, 3, h, w]; attention [B, P] over the P = rows*cols patches of o_{t+n}.

    One row per example: o_t, o_{t+n}, and o_{t+n} with the attention heatmap on top.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = current_images.shape[0]
    h, w = future_images.shape[-2:]
    heat = attention.float().reshape(b, 1, *grid)
    heat = F.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = heat.flatten(1).amin(1)[:, None, None], heat.flatten(1).amax(1)[:, None, None]
    heat = (heat - lo) / (hi - lo).clamp(min=1e-12)  # per-example contrast: where the queries look most
    fig, axes = plt.subplots(b, 3, figsize=(6, 2 * b), squeeze=False)
    for i in range(b):
        cur = current_images[i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        fut = future_images[i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        axes[i, 0].imshow(cur)
        axes[i, 1].imshow(fut)
        axes[i, 2].imshow(fut)
        axes[i, 2].imshow(heat[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if titles:
            axes[i, 0].set_ylabel(titles[i][:28], fontsize=6)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("o_t", "o_t+n", "query attention")):
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
