"""Per-component inference latency of a DeFI policy, shaped like paper Table 13, plus the whole `act` step.

Batch 1, the policy's own cameras; each figure is the median of `repeats` timed calls after three warm-up calls.
Used by `benchmarks/bench_policy.py` (random weights at a preset) and by the demo report (the finetuned policy).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

WHOLE_STEP = "whole act() step"


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of `fn` after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def policy_latency(policy: Any, repeats: int = 20, instruction: str = "push the puck to the goal") -> dict[str, Any]:
    """{"rows": {component: ms}, "whole_ms", "sum_of_parts_ms", "threads", "parameters_m": {part: M}}."""
    cfg = policy.config
    policy.eval()
    size = cfg.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, len(cfg.cameras), 3, size, size), dtype=torch.uint8, generator=gen)
    words = [instruction]
    obs = {f"observation.images.{c}": images[0, i].permute(1, 2, 0).numpy() for i, c in enumerate(cfg.cameras)}
    obs["observation.state"] = np.zeros(cfg.state_dim, np.float32)
    state = torch.zeros(1, cfg.state_dim) if cfg.state_dim else None
    with torch.no_grad():
        feats = policy.gfdm.extract_features(images, words)
        feats.pop("latents")
        tokens, cond = policy.condition(images, words, state)
        frame_enc = policy.frame_encoder()
        current = frame_enc(images[:, cfg.gidm_view])
        text_tokens = text_mask = None
        if cfg.inverse.text_dim:
            emb = policy.text_encoder(cfg.inverse_text).encode(words)
            text_tokens, text_mask = emb.tokens, emb.mask
        future_in = torch.zeros(1, current.shape[1], policy.future_mlp[0].in_features)
        rows = {
            "GFDM one-step features": timed(lambda: policy.gfdm.extract_features(images, words), repeats),
            "frame encoder (frozen)": timed(lambda: frame_enc(images[:, cfg.gidm_view]), repeats),
            "Video Former": timed(lambda: policy.video_former(feats), repeats),
            "MLP + GIDM encoder": timed(lambda: policy.gidm.infer_latent_actions(
                current, current + policy.future_mlp(future_in), text_tokens, text_mask), repeats),
            f"adapter ({cfg.adapter.num_sampling_steps}-step sampling)": timed(
                lambda: policy.adapter.sample(tokens, cond), repeats),
        }
    whole = timed(lambda: policy.act(obs, instruction), repeats)
    params = {name: sum(p.numel() for p in getattr(policy, name).parameters()) / 1e6
              for name in ("gfdm", "gidm", "video_former", "adapter")}
    return {"rows": rows, "whole_ms": whole, "sum_of_parts_ms": sum(rows.values()),
            "threads": torch.get_num_threads(), "repeats": repeats, "parameters_m": params}


def latency_table(result: dict[str, Any]) -> str:
    lines = ["| component | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result["rows"].items()]
    whole = result["whole_ms"]
    lines.append(f"| **{WHOLE_STEP}** | **{whole:.1f}** ({1000 / whole:.1f} Hz) |")
    return "\n".join(lines)
