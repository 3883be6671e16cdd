"""Speed and size of the DiT action adapter (and the image diffusion-policy baseline built on it).

Prints:
- parameter counts of the adapter at `small` and `paper` (built on the meta device) and of the baseline;
- latency of one 10-step `sample` call, batch 1, at `small` and `paper`, for cross-attention (the default) and
  prefix-token conditioning (the alternative), and of the baseline's whole `sample` (encoder + adapter);
- training steps/s of the `small` adapter at batch 32 (loss + backward + AdamW step), and of the small baseline.
Every timing is the median of repeated calls after warm-up. Because the machine is shared and loaded, each figure
is also given relative to a reference workload timed interleaved with it (a fixed 256x256 fp32 matmul loop, see
`Reference`), and adapter latency as a share of the whole-policy budget of 50 ms (20 Hz) from issue 6.

    python benchmarks/bench_adapter.py                 # torch's default thread count
    python benchmarks/bench_adapter.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from defi.models.adapter import ActionAdapterConfig, DiTActionAdapter, sample_actions
from defi.policies.image_dp import ImageDPConfig, ImageDPPolicy
from defi.utils.environment import describe_cpu

POLICY_BUDGET_MS = 50.0  # issue 6: a whole policy step at 20 Hz
PAPER_ADAPTER_MS_4090 = 24.3  # paper Table 13 (RTX 4090); other hardware, printed for orientation only


class Reference:
    """A fixed workload (20 x tanh(256x256 @ 256x256), fp32) timed right before every measured call.

    The machine is shared, so its speed drifts within a run; dividing each figure by the reference's median over
    the same repeats gives a ratio that is comparable across runs and machines.
    """

    def __init__(self, device: torch.device, sync: Callable[[], None]):
        self.a = torch.randn(256, 256, device=device)
        self.sync = sync

    def __call__(self) -> None:
        x = self.a
        for _ in range(20):
            x = torch.tanh(x @ self.a)
        self.sync()

    def measure(self, fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float, float]:
        """-> (median ms of fn, median ms of the reference, ratio of the two) over interleaved repeats."""
        for _ in range(warmup):
            fn()
            self()
        self.sync()
        fn_ms, ref_ms = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            self()
            middle = time.perf_counter()
            fn()
            self.sync()
            end = time.perf_counter()
            ref_ms.append((middle - start) * 1e3)
            fn_ms.append((end - middle) * 1e3)
        fn_med, ref_med = statistics.median(fn_ms), statistics.median(ref_ms)
        return fn_med, ref_med, fn_med / ref_med


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_adapter(preset: str, cond_dim: int, num_cond: int, global_dim: int, device: torch.device | str, **changes):
    cfg = dataclasses.replace(ActionAdapterConfig.preset(preset), **changes)
    cfg = cfg.with_interface(cond_dim=cond_dim, num_cond_tokens=num_cond, global_cond_dim=global_dim)
    with torch.device(device):
        return DiTActionAdapter(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cond-tokens", type=int, default=48,
                        help="condition tokens N (latent actions + Video Former)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--train-steps", type=int, default=7)
    parser.add_argument("--sweep", action="store_true",
                        help="also time sample() for a few narrower/shallower adapters (to pick a CPU preset)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    ref = Reference(device, sync)
    # (cond_dim, global_cond_dim) per size: small = MiniLM-sized features; paper = GIDM width 768, CLIP text 512
    interface = {"small": (384, 384), "paper": (768, 512)}
    n = args.cond_tokens
    print(describe_cpu())
    print(f"device={device} threads={torch.get_num_threads()} condition tokens N={n} "
          f"(cond_dim, global_dim)={interface}")
    print("'x ref' = median time / median time of the reference workload (20 x tanh(256x256 matmul)) timed "
          "interleaved with it\n")

    print("parameters")
    for preset in ("small", "paper"):
        cond_dim, global_dim = interface[preset]
        adapter = build_adapter(preset, cond_dim, n, global_dim, "meta")
        prefix = build_adapter(preset, cond_dim, n, global_dim, "meta", cond_attention="prefix")
        with torch.device("meta"):
            baseline = ImageDPPolicy(ImageDPConfig.preset(preset))
        print(f"  adapter {preset:5s}: {count(adapter) / 1e6:6.2f} M (prefix conditioning: {count(prefix) / 1e6:.2f} M)"
              f"   baseline image policy {preset}: {count(baseline) / 1e6:.2f} M "
              f"(encoder {count(baseline.encoder) / 1e6:.2f} M)")

    print("\nlatency of one sample() call, batch 1, 10 steps (median; x ref; share of the 50 ms policy budget)")
    ratios = {}
    for preset in ("small", "paper"):
        cond_dim, global_dim = interface[preset]
        for mode in ("cross", "prefix"):
            adapter = build_adapter(preset, cond_dim, n, global_dim, device, cond_attention=mode).eval()
            cond = torch.randn(1, n, cond_dim, device=device)
            glob = torch.randn(1, global_dim, device=device)
            ms, ref_ms, ratio = ref.measure(lambda: sample_actions(adapter, cond, glob), args.repeats)
            ratios[preset, mode] = ratio
            print(f"  adapter {preset:5s} {mode:6s}: {ms:8.2f} ms  ({ratio:5.2f} x ref of {ref_ms:.1f} ms; "
                  f"{ms / POLICY_BUDGET_MS:6.1%} of budget)")
        print(f"  -> {preset}: prefix / cross = {ratios[preset, 'prefix'] / ratios[preset, 'cross']:.2f}")
    print(f"  paper / small (cross) = {ratios['paper', 'cross'] / ratios['small', 'cross']:.2f}; paper Table 13 "
          f"reports {PAPER_ADAPTER_MS_4090} ms on an RTX 4090 (other hardware)")

    if args.sweep:
        cond_dim, global_dim = interface["small"]
        cond = torch.randn(1, n, cond_dim, device=device)
        glob = torch.randn(1, global_dim, device=device)
        for dim, depth, heads, steps in ((256, 6, 4, 5), (256, 4, 4, 10), (192, 6, 3, 10), (192, 4, 3, 10),
                                         (128, 4, 2, 10)):
            adapter = build_adapter("small", cond_dim, n, global_dim, device, dim=dim, depth=depth, heads=heads)
            adapter.eval()
            ms, ref_ms, ratio = ref.measure(lambda: sample_actions(adapter, cond, glob, num_steps=steps), args.repeats)
            print(f"  sweep dim {dim} depth {depth} ({count(adapter) / 1e6:.2f} M), {steps:2d} steps: {ms:8.2f} ms  "
                  f"({ratio:5.2f} x ref of {ref_ms:.1f} ms; {ms / POLICY_BUDGET_MS:6.1%} of budget)")

    base_cfg = dataclasses.replace(ImageDPConfig.preset("small"), state_dim=0)
    with torch.device(device):
        baseline = ImageDPPolicy(base_cfg)
    baseline.normalizer.set_stats({"action": {"min": [-1.0] * 4, "max": [1.0] * 4}})
    baseline.eval()
    size, views = base_cfg.image_size, len(base_cfg.cameras)
    images = torch.randint(0, 256, (1, views, 3, size, size), dtype=torch.uint8, device=device)
    one = {"images": images, "instruction": ["push the puck to the goal"]}
    ms, ref_ms, ratio = ref.measure(lambda: baseline.predict_action_chunk(one), args.repeats)
    print(f"  baseline image policy small (encoder + adapter): {ms:8.2f} ms  ({ratio:5.2f} x ref of {ref_ms:.1f} ms;"
          f" {ms / POLICY_BUDGET_MS:6.1%} of budget)")

    print("\ntraining steps/s, batch 32 (loss + backward + AdamW step)")
    batch = 32
    cond_dim, global_dim = interface["small"]
    adapter = build_adapter("small", cond_dim, n, global_dim, device).train()
    cfg = adapter.config
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    cond = torch.randn(batch, n, cond_dim, device=device)
    glob = torch.randn(batch, global_dim, device=device)
    actions = torch.rand(batch, cfg.action_horizon, cfg.action_dim, device=device) * 2 - 1
    mask = torch.ones(batch, cfg.action_horizon, dtype=torch.bool, device=device)

    def adapter_step() -> None:
        loss = adapter.loss(actions, mask, cond, glob)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms, ref_ms, ratio = ref.measure(adapter_step, args.train_steps)
    print(f"  adapter small: {1e3 / ms:7.2f} steps/s ({ms:.1f} ms/step, {ratio:.2f} x ref of {ref_ms:.1f} ms)")

    baseline.train()
    opt = torch.optim.AdamW(baseline.parameters(), lr=1e-4)
    train_batch = {
        "images": torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8, device=device),
        "actions": actions,
        "action_mask": mask,
        "instruction": ["push the puck to the goal"] * batch,
    }

    def baseline_step() -> None:
        loss = baseline(train_batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms, ref_ms, ratio = ref.measure(baseline_step, max(3, args.train_steps // 2), warmup=1)
    print(f"  baseline image policy small: {1e3 / ms:7.2f} steps/s ({ms:.1f} ms/step, {ratio:.2f} x ref of "
          f"{ref_ms:.1f} ms)")


if __name__ == "__main__":
    main()
