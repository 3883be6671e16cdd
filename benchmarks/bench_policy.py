"""Per-component inference latency of the DeFI policy, shaped like paper Table 13, plus the whole `act` step.

    python benchmarks/bench_policy.py [--preset small] [--repeats 20]

Components (batch 1, one camera unless the preset has more): the GFDM's one-step features, the frame encoder,
the MLP + GIDM encoder, the Video Former, the adapter's 10-step sampling, and a whole `policy.act` call; the
target for the CPU preset is a whole step <= 50 ms (20 Hz). Each figure is the median of `repeats` timed calls
after warm-up; the whole-step figure is also compared with the sum of its parts (a ratio), since the machine
is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from defi.models.policy import POLICY_PRESETS, DeFIPolicy


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=sorted(POLICY_PRESETS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = POLICY_PRESETS[args.preset]()
    policy = DeFIPolicy(cfg).eval()
    stats = {"mean": [0.0] * cfg.action_dim, "std": [1.0] * cfg.action_dim,
             "min": [-1.0] * cfg.action_dim, "max": [1.0] * cfg.action_dim}
    sstats = {k: [v[0]] * cfg.state_dim for k, v in stats.items()}
    policy.set_normalization(stats, sstats if cfg.state_dim else None)
    size = cfg.image_size
    images = torch.randint(0, 256, (1, len(cfg.cameras), 3, size, size), dtype=torch.uint8)
    instruction = ["push the puck to the goal"]
    obs = {f"observation.images.{c}": np.full((size, size, 3), 100, np.uint8) for c in cfg.cameras}
    obs["observation.state"] = np.zeros(cfg.state_dim, np.float32)
    state = torch.zeros(1, cfg.state_dim) if cfg.state_dim else None

    with torch.no_grad():
        feats = policy.gfdm.extract_features(images, instruction)
        latents = feats.pop("latents")
        tokens, cond = policy.condition(images, instruction, state)
        frame_enc = policy.frame_encoder()
        current = frame_enc(images[:, cfg.gidm_view])
        rows = {
            "GFDM one-step features": timed(lambda: policy.gfdm.extract_features(images, instruction), args.repeats),
            "frame encoder (frozen)": timed(lambda: frame_enc(images[:, cfg.gidm_view]), args.repeats),
            "Video Former": timed(lambda: policy.video_former(feats), args.repeats),
            "MLP + GIDM encoder": timed(lambda: policy.gidm.infer_latent_actions(
                current, current + policy.future_mlp(torch.zeros(1, current.shape[1], policy.future_mlp[0].in_features)),
                *_text(policy, instruction)), args.repeats),
            f"adapter ({cfg.adapter.num_sampling_steps}-step sampling)": timed(
                lambda: policy.adapter.sample(tokens, cond), args.repeats),
        }
    whole = timed(lambda: policy.act(obs, instruction[0]), args.repeats)
    params = {name: sum(p.numel() for p in getattr(policy, name).parameters()) / 1e6
              for name in ("gfdm", "gidm", "video_former", "adapter")}
    print(f"DeFI policy latency, preset {args.preset!r}, batch 1, {torch.get_num_threads()} threads, "
          f"device cpu, median of {args.repeats}")
    print("| component | ms |")
    print("|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} |")
    parts = sum(rows.values())
    print(f"| **whole act() step** | **{whole:.1f}** ({1000 / whole:.1f} Hz) |")
    print(f"sum of parts {parts:.1f} ms; whole/parts = {whole / parts:.2f}; target <= 50 ms: "
          f"{'met' if whole <= 50 else 'NOT met'}")
    print("parameters (M): " + ", ".join(f"{k} {v:.2f}" for k, v in params.items()))
    del latents


def _text(policy: DeFIPolicy, instruction: list[str]):
    if not policy.config.inverse.text_dim:
        return None, None
    emb = policy.text_encoder(policy.config.inverse_text).encode(instruction)
    return emb.tokens, emb.mask


if __name__ == "__main__":
    main()
