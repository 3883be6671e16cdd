"""GFDM speed figures (print only; the machine is shared, so compare the ratios, not absolute times).

1. training samples/s of a preset (default `small`), plain AdamW steps on contract-shaped random clips;
2. latency of one-step feature extraction vs a multi-step (default 20) sample of the same model, interleaved
   repeats, medians, and their ratio (paper Q3: one step is what makes the policy fast);
3. parameter count of the `paper` config (SVD-xt sized), built on the meta device.

    python benchmarks/bench_forward.py --preset small --train-steps 6 --repeats 5 --threads 1

Measured 2026-11-25, shared 2-core CPU, 1 thread (two runs, the first under heavy load from other jobs):
  small: 0.450 s/step (17.8 samples/s) | 0.662 s/step (12.1 samples/s), batch 8 x 1 view
  one-step features 51.3 ms vs 20-step sample 1050 ms -> 20.5x | 71.6 ms vs 1669 ms -> 23.3x
  paper: 1.623B parameters (unet 1.525B, vae 97.7M, text projection 0.79M)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from defi.models.forward import ForwardDynamicsConfig, ForwardDynamicsModel, one_step, sample_future
from defi.utils.environment import describe_cpu


def random_batch(cfg, batch: int, views: int) -> dict:
    s, f = cfg.image_size, cfg.num_frames
    return {
        "images": torch.randint(0, 256, (batch, views, 3, s, s), dtype=torch.uint8),
        "future_images": torch.randint(0, 256, (batch, views, f, 3, s, s), dtype=torch.uint8),
        "future_mask": torch.ones(batch, f, dtype=torch.bool),
        "instruction_tokens": torch.randn(batch, 8, cfg.text_dim),
    }


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=ForwardDynamicsConfig.preset_names())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = ForwardDynamicsConfig.preset(args.preset)
    if cfg.backend == "svd":
        cfg.pretrained = ""  # speed does not depend on the weights' values
    model = ForwardDynamicsModel(cfg)
    print(describe_cpu())
    print(f"preset {args.preset}: backend {cfg.backend}, {cfg.image_size}x{cfg.image_size}, {cfg.num_frames} frames, "
          f"latents {cfg.latent_channels}x{cfg.latent_side}x{cfg.latent_side}, {count(model) / 1e6:.2f}M parameters, "
          f"torch threads {torch.get_num_threads()}")

    # 1. training throughput
    batch = random_batch(cfg, args.batch_size, args.views)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(args.train_steps + 1):
        start = time.perf_counter()
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(f"training: batch {args.batch_size} clips x {args.views} view(s): median {step_s:.3f} s/step, "
          f"{args.batch_size / step_s:.2f} samples/s, {1 / step_s:.2f} steps/s")

    # 2. one-step features vs a multi-step sample, interleaved so that load changes hit both alike
    model.eval()
    one = random_batch(cfg, 1, 1)
    one_step(model, one["images"], one["instruction_tokens"])
    sample_future(model, one["images"], one["instruction_tokens"], num_steps=2)
    feat_t, sample_t = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_step(model, one["images"], one["instruction_tokens"])
        feat_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        sample_future(model, one["images"], one["instruction_tokens"], num_steps=args.sample_steps)
        sample_t.append(time.perf_counter() - start)
    feat_ms, sample_ms = statistics.median(feat_t) * 1e3, statistics.median(sample_t) * 1e3
    print(f"inference (1 clip, 1 view): one-step features {feat_ms:.1f} ms, {args.sample_steps}-step sample "
          f"{sample_ms:.1f} ms (with decoding) -> ratio {sample_ms / feat_ms:.1f}x")

    # 3. paper-size parameter count without allocating weights
    with torch.device("meta"):
        paper = ForwardDynamicsModel(ForwardDynamicsConfig.preset("paper"))
    print(f"paper config: {count(paper) / 1e9:.3f}B parameters (unet {count(paper.unet) / 1e9:.3f}B, "
          f"vae {count(paper.latents) / 1e6:.1f}M, text projection {count(paper.text_proj) / 1e6:.2f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
