"""Probes of what a learnt representation holds: closed-form ridge-regression probes (how linearly it predicts
the true action, R^2) and the GIDM's action-query attention over image patches drawn into a PNG (paper Fig. 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    y_mean = y.mean(0)
    n, d = xs.shape
    if d > n:
        # wide inputs (pixels, flattened feature maps): the dual form gives the same weights from an n x n
        # system, where the primal d x d one would take minutes and gigabytes
        gram = xs @ xs.T + alpha * torch.eye(n, dtype=xs.dtype)
        weight = xs.T @ torch.linalg.solve(gram, y - y_mean)
    else:
        gram = xs.T @ xs + alpha * torch.eye(d, dtype=xs.dtype)
        weight = torch.linalg.solve(gram, xs.T @ (y - y_mean))
    return mean, std, weight, y_mean


def _predict(fit, x: torch.Tensor) -> torch.Tensor:
    mean, std, weight, y_mean = fit
    return ((x - mean) / std) @ weight + y_mean


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over target dimensions (those that vary) of 1 - SS_res / SS_tot."""
    ss_tot = (target - target.mean(0)).pow(2).sum(0)
    ss_res = (target - pred).pow(2).sum(0)
    keep = ss_tot > 1e-12
    if not bool(keep.any()):
        return float("nan")
    return float((1 - ss_res[keep] / ss_tot[keep]).mean())


def ridge_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
) -> dict[str, float]:
    """Fit ridge on standardised features; alpha chosen on the last 20% of the training rows; R^2 on the test rows.

    Rows are expected grouped by episode (callers sort them) so that the alpha hold-out and the test split do not
    share episodes with the rows they are scored against.
    """
    x_train, y_train, x_test, y_test = (t.double() for t in (x_train, y_train, x_test, y_test))
    cut = max(1, int(0.8 * len(x_train)))
    best_alpha, best = alphas[0], -float("inf")
    if cut < len(x_train):
        for alpha in alphas:
            score = r2_score(_predict(_fit(x_train[:cut], y_train[:cut], alpha), x_train[cut:]), y_train[cut:])
            if score > best:
                best_alpha, best = alpha, score
    fit = _fit(x_train, y_train, best_alpha)
    return {
        "r2": r2_score(_predict(fit, x_test), y_test),
        "train_r2": r2_score(_predict(fit, x_train), y_train),
        "alpha": best_alpha,
    }


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
