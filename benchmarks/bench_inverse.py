"""GIDM speed and size: training steps/s at `small`, `infer_latent_actions` latency (batch 1) at `small` and
`paper`, parameter counts. Every timing is printed next to a same-run baseline so that a shared, noisy machine
still gives comparable figures:

- `matmul`: one fp32 1024x1024 @ 1024x1024 product (machine speed right now),
- the Table 7 baselines (MLP IDM, plain transformer IDM) built at the same width/depth.

Usage: python benchmarks/bench_inverse.py [--steps 20] [--threads N] [--skip-paper]
"""

from __future__ import annotations

import argparse
import time

import torch

from defi.models.inverse import GIDM, GIDMConfig, table7_variant
from defi.utils.environment import describe_cpu


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def inputs(cfg, batch: int, text_len: int = 16):  # MiniLM max_length at small
    cur = torch.randn(batch, cfg.num_patches, cfg.feature_dim)
    fut = torch.randn(batch, cfg.num_patches, cfg.feature_dim)
    text = torch.randn(batch, text_len, cfg.text_dim)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[:, text_len // 2 :] = False
    return cur, fut, text, mask


def train_step_time(cfg, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = GIDM(cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = inputs(cfg, batch)

    def step():
        loss = model(*data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, steps)


def latency(cfg, repeats: int) -> float:
    torch.manual_seed(0)
    model = GIDM(cfg).eval()
    data = inputs(cfg, 1)

    @torch.no_grad()
    def run():
        model.infer_latent_actions(*data)

    return timed(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)  # the small preset's batch
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_cpu())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm = timed(lambda: a @ b, 20)
    print(f"baseline matmul 1024^3: {mm * 1e3:.2f} ms ({2 * 1024**3 / mm / 1e9:.1f} GFLOP/s)")

    from defi.models.encoders.frame import FrameEncoderConfig, build_frame_encoder

    enc = build_frame_encoder(FrameEncoderConfig())  # the small preset's patch encoder
    frames = torch.randint(0, 256, (256, 3, 64, 64), dtype=torch.uint8)
    t = timed(lambda: enc(frames), 5)
    print(f"patch frame encoder, 64x64 -> {enc.num_patches} x {enc.dim}: {256 / t:,.0f} frames/s (= {t / mm:.2f} matmuls per 256)")

    print("\nparameters (GIDM incl. the pretraining decoder | encoder part kept for the policy)")
    for name in ("tiny", "small", "paper"):
        fn = lambda name=name: GIDMConfig.preset(name)  # noqa: E731
        if name == "paper" and args.skip_paper:
            continue
        model = GIDM(fn())
        total = sum(p.numel() for p in model.parameters())
        dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder"))
        print(f"  {name:6s} {total / 1e6:8.2f} M | {(total - dec) / 1e6:8.2f} M")
        del model

    small = GIDMConfig.preset("small")
    print(f"\ntraining at small (batch {args.batch}, P={small.num_patches}, D={small.feature_dim}, dim {small.dim}, "
          f"depth {small.depth}, text 16 tokens):")
    base = None
    for name in ("gidm", "transformer", "mlp"):
        t = train_step_time(table7_variant(small, name), args.batch, args.steps)
        base = base or t
        print(f"  {name:12s} {1 / t:7.2f} steps/s  {args.batch / t:8.1f} samples/s  "
              f"= {t / mm:7.1f} matmuls/step, {base / t:5.2f}x the GIDM's speed")

    print("\ninfer_latent_actions latency, batch 1:")
    for name, cfg in (("small", small), ("paper", GIDMConfig.preset("paper"))):
        if name == "paper" and args.skip_paper:
            continue
        t = latency(cfg, 10 if name == "small" else 3)
        print(f"  {name:6s} {t * 1e3:8.1f} ms  = {t / mm:7.1f} matmuls")
    print("(paper, Table 14: 42.9 ms for the GIDM on an NVIDIA H100)")


if __name__ == "__main__":
    main()
