"""One policy step at batch 1, DeFI against the image diffusion-policy baseline, side by side (issue 14, item 2).

    python benchmarks/bench_step.py                      # small presets, 1 and 2 threads, 30 interleaved rounds
    python benchmarks/bench_step.py --threads 1 --repeats 60 --samplers ddim:10 dpm_solver:5

What it measures: `policy.act(observation, instruction)` (what a robot calls) of the `small` DeFI policy and of the
`small` image diffusion policy, random weights (the compute of trained ones), seeded. Every round times each
variant once, in turn (A/B/A/B...), so a load change on the shared machine hits all of them alike; each variant's
figure is its median over rounds, and its ratio to image DP is the median of the per-round ratios.

Variants:
- "image DP": the baseline, its default path (its encoder and denoiser traced), and "image DP, untraced";
- "DeFI, training path": the inference optimisations off (the GFDM and GIDM run as they do in training);
- one row per optimisation on top of the training path, then "DeFI (default)": all of them (what `act` runs);
- with `--samplers`, DeFI (default path) with another adapter sampler / step count: these change the actions
  (a success figure is needed before any becomes a default).
Then the per-component medians of both policies (`timed_parts`, interleaved in the same way) and what the
act-level Python overhead costs. The target of issue 14 is act(DeFI) <= 1.3 x act(image DP) at the same threads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from defi.config import replace
from defi.models.traced import tracing_status
from defi.policies.base import observation_to_batch
from defi.policies.defi import DeFIConfig, DeFIPolicy
from defi.policies.image_dp import ImageDPConfig, ImageDPPolicy
from defi.train.trainer import resolve_mixed_precision
from defi.utils.environment import cpu_description, cpu_line

TARGET_RATIO = 1.3
INSTRUCTION = "push the puck to the goal"
# DeFIPolicy attributes that switch one inference optimisation (each is on by default)
OPTIMISATIONS = {
    "fast_gfdm": "GFDM one-step: constants once, merged cross-attention, output layer on the read frame",
    "fast_gidm": "GIDM encoder: last block on the action queries only",
    "traced_inference": "networks as TorchScript traces (no Python between operations)",
}


def _stats(dim: int) -> dict[str, list[float]]:
    return {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim}


def build(policy_cls, config):
    torch.manual_seed(0)
    policy = policy_cls(config).eval()
    stats = {"action": _stats(config.action_dim)}
    if config.state_dim:
        stats["observation.state"] = _stats(config.state_dim)
    policy.normalizer.set_stats(stats)
    return policy


def with_switches(policy: DeFIPolicy, on: set[str]) -> DeFIPolicy:
    """A fork of `policy` (same weights) with only the optimisations in `on` switched on."""
    fork = policy.fork()
    for name in OPTIMISATIONS:
        setattr(fork, name, name in on)
    return fork


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, baseline: str) -> dict[str, tuple[float, float]]:
    """{name: (median ms, median of the per-round ratios to `baseline`)}, all timed in turn every round."""
    for fn in fns.values():  # warm-up: caches, lazily built inference paths
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    base = times[baseline]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base)))
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=DeFIConfig.preset_names())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--samplers", nargs="*", default=["ddim:5", "dpm_solver:5"],
                        help="extra DeFI rows: adapter sampler:steps (these change the actions)")
    args = parser.parse_args()

    defi_cfg, dp_cfg = DeFIConfig.preset(args.preset), ImageDPConfig.preset(args.preset)
    defi, dp = build(DeFIPolicy, defi_cfg), build(ImageDPPolicy, dp_cfg)
    dp_plain = dp.fork()
    dp_plain.traced_inference = False
    variants: dict[str, DeFIPolicy] = {"image DP, untraced": dp_plain,
                                       "DeFI, training path": with_switches(defi, set())}
    for name in OPTIMISATIONS:
        variants[f"DeFI, + {name} only"] = with_switches(defi, {name})
    variants["DeFI (default)"] = defi
    for spec in args.samplers:
        sampler, steps = spec.split(":")
        cfg = replace(defi_cfg, adapter=replace(defi_cfg.adapter, sampler=sampler, num_sampling_steps=int(steps)))
        other = build(DeFIPolicy, cfg)
        other.load_state_dict(defi.state_dict())
        variants[f"DeFI (default), {sampler} {steps} steps"] = other

    rng = np.random.default_rng(0)
    obs = {f"observation.images.{cam}": rng.integers(0, 256, (defi_cfg.image_size, defi_cfg.image_size, 3),
                                                     dtype=np.uint8) for cam in defi_cfg.cameras}
    obs["observation.state"] = rng.standard_normal(defi_cfg.state_dim).astype(np.float32)
    print(f"bench_step: preset {args.preset!r}, batch 1, random weights, {args.repeats} interleaved rounds; "
          f"torch {torch.__version__}")
    print(tracing_status())
    print("optimisations (DeFIPolicy switches, all on by default): "
          + "; ".join(f"{name}: {what}" for name, what in OPTIMISATIONS.items()))
    print(f"mixed_precision=auto resolves to {resolve_mixed_precision('auto')!r} here (bf16 only with avx512_bf16 "
          "or AMX; every figure below is fp32)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {cpu_line(cpu_description())}")
        fns: dict[str, Callable[[], object]] = {"image DP": lambda: dp.act(obs, INSTRUCTION)}
        for name, policy in variants.items():
            fns[name] = (lambda p: lambda: p.act(obs, INSTRUCTION))(policy)
        result = interleaved(fns, args.repeats, "image DP")
        plain = result["DeFI, training path"][0]
        print("| act() at batch 1 | ms (median) | x image DP (paired) | vs DeFI training path |")
        print("|---|---|---|---|")
        for name, (ms, ratio) in result.items():
            print(f"| {name} | {ms:.1f} | {ratio:.2f} | {plain / ms:.2f}x faster |")
        ratio = result["DeFI (default)"][1]
        print(f"target act(DeFI) <= {TARGET_RATIO} x act(image DP): {ratio:.2f} -> "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")

        parts: dict[str, Callable[[], object]] = {}
        with torch.no_grad():
            for label, policy in (("image DP", dp), ("DeFI", defi), ("image DP, untraced", dp_plain),
                                  ("DeFI, training path", variants["DeFI, training path"])):
                batch = observation_to_batch(obs, INSTRUCTION, policy.metadata, policy.device)
                for part, fn in policy.timed_parts(batch).items():
                    parts[f"{label}: {part}"] = fn
            timed = interleaved(parts, max(5, args.repeats // 2), next(iter(parts)))
        print("\n| component (interleaved medians) | ms |")
        print("|---|---|")
        for name, (ms, _) in timed.items():
            print(f"| {name} | {ms:.1f} |")
        walk = interleaved({"eval() (module walk)": defi.eval, "list all tensors": lambda: (
            *defi.parameters(), *defi.buffers())}, args.repeats, "eval() (module walk)")
        print("per-act Python overhead removed from act_batch (DeFI, 680 modules): "
              + ", ".join(f"{name} {ms:.2f} ms" for name, (ms, _) in walk.items()))


if __name__ == "__main__":
    main()
