"""One policy step at batch 1, DeFI against the image diffusion-policy baseline, side by side (issue 14, item 2).

    python benchmarks/bench_step.py                      # small presets, 1 and 2 threads, 40 interleaved rounds
    python benchmarks/bench_step.py --threads 1 --repeats 80 --samplers ddim:8 dpm_solver:5

What it measures: `policy.act(observation, instruction)` (what a robot calls) of the `small` DeFI policy and of the
`small` image diffusion policy, random weights (the compute of trained ones), seeded. Every round times each
variant once, in turn (A/B/A/B...), so that a load change on the shared machine hits all of them alike; a
variant's figure is its median over rounds, and its ratio to image DP the median of the per-round ratios.

Variants:
- "image DP": the baseline as it runs by default (its encoder and denoiser traced); "image DP, as on main": the
  path before issue 14 (untraced, plus the two module walks `act` made per call then, see the last line);
- "DeFI, as on main": likewise; "DeFI, training path": every inference optimisation off; one row per
  optimisation alone; "DeFI (default)": all of them, what `act` runs. These all give the same actions (up to float
  rounding, tests/test_policy_defi.py);
- with `--samplers`, DeFI's default path with another adapter sampler / number of steps: these CHANGE the actions,
  and need a success figure before any becomes a default.
Then the per-component medians of both policies (`timed_parts`, interleaved the same way). The target of issue 14
is act(DeFI) <= 1.3 x act(image DP) at the same thread count.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
import torch

from defi.eval.latency import paired
from defi.models.traced import tracing_status
from defi.policies.base import observation_to_batch
from defi.policies.defi import DeFIConfig, DeFIPolicy
from defi.policies.image_dp import ImageDPConfig, ImageDPPolicy
from defi.train.trainer import resolve_mixed_precision
from defi.utils.environment import cpu_description, describe_cpu

TARGET_RATIO = 1.3
INSTRUCTION = "push the puck to the goal"
# DeFIPolicy attributes that switch one inference optimisation (each on by default)
OPTIMISATIONS = {
    "fast_gfdm": "GFDM one-step by FastOneStep (constants once, merged cross-attention, output layer on one frame)",
    "fast_gidm": "GIDM encoder's last block on the action queries only",
    "traced_inference": "networks as TorchScript traces (no Python between operations)",
}
# timing: defi.eval.latency.paired, whose 5 warm-up rounds cover tracing (a traced signature runs eagerly twice, is
# traced at its 3rd call and optimised by TorchScript at the 4th: defi.models.traced)


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


def with_switches(policy, on: set[str], names=tuple(OPTIMISATIONS)):
    """A fork of `policy` (same weights) with only the optimisations in `on` switched on."""
    fork = policy.fork()
    for name in names:
        setattr(fork, name, name in on)
    return fork


def as_on_main(policy, obs) -> Callable[[], object]:
    """`act` with what `act_batch` did per call before issue 14: `policy.eval()` and, twice (`policy.device`),
    a tuple of every parameter and buffer."""
    def act():
        policy.eval()
        for _ in range(2):
            next(iter((*policy.parameters(), *policy.buffers())))
        return policy.act(obs, INSTRUCTION)
    return act


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, baseline: str) -> dict[str, tuple[float, float]]:
    """{name: (median ms, median of the per-round ratios to `baseline`)}, all timed in turn every round."""
    times = paired(fns, rounds)
    base = times[baseline]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base)))
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=DeFIConfig.preset_names())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--samplers", nargs="*", default=["ddim:8", "dpm_solver:5"],
                        help="extra DeFI rows, adapter sampler:steps (these change the actions)")
    parser.add_argument("--no-parts", action="store_true", help="skip the per-component table")
    args = parser.parse_args()

    defi_cfg, dp_cfg = DeFIConfig.preset(args.preset), ImageDPConfig.preset(args.preset)
    defi, dp = build(DeFIPolicy, defi_cfg), build(ImageDPPolicy, dp_cfg)
    rng = np.random.default_rng(0)
    obs = {f"observation.images.{cam}": rng.integers(0, 256, (defi_cfg.image_size, defi_cfg.image_size, 3),
                                                     dtype=np.uint8) for cam in defi_cfg.cameras}
    obs["observation.state"] = rng.standard_normal(defi_cfg.state_dim).astype(np.float32)

    dp_main = with_switches(dp, set(), ("traced_inference",))
    defi_plain = with_switches(defi, set())
    fns: dict[str, Callable[[], object]] = {
        "image DP": lambda: dp.act(obs, INSTRUCTION),
        "image DP, as on main": as_on_main(dp_main, obs),
        "DeFI, as on main": as_on_main(with_switches(defi, set()), obs),
        "DeFI, training path": lambda: defi_plain.act(obs, INSTRUCTION),
    }
    for name in OPTIMISATIONS:
        fns[f"DeFI, + {name} only"] = (lambda p: lambda: p.act(obs, INSTRUCTION))(with_switches(defi, {name}))
    fns["DeFI (default)"] = lambda: defi.act(obs, INSTRUCTION)
    for spec in args.samplers:
        other = defi.fork()  # the same weights; DeFIPolicy.sampler / sampling_steps override the config's
        other.sampler, steps = spec.split(":")
        other.sampling_steps = int(steps)
        fns[f"DeFI (default), {other.sampler} {steps} steps (other actions)"] = (
            lambda p: lambda: p.act(obs, INSTRUCTION))(other)

    print(f"bench_step: preset {args.preset!r}, batch 1, random weights, {args.repeats} interleaved rounds; "
          f"torch {torch.__version__}; {tracing_status()}")
    print(f"mixed_precision=auto resolves to {resolve_mixed_precision('auto')!r} here (bf16 only with avx512_bf16 "
          "or AMX); every figure below is fp32")
    print("optimisations (DeFIPolicy switches, all on by default): "
          + "; ".join(f"{name}: {what}" for name, what in OPTIMISATIONS.items()))
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {describe_cpu(description=cpu_description())}\n")
        result = interleaved(fns, args.repeats, "image DP")
        print("| act() at batch 1 | ms (median) | x image DP (median of paired ratios) |")
        print("|---|---|---|")
        for name, (ms, ratio) in result.items():
            print(f"| {name} | {ms:.1f} | {ratio:.2f} |")
        main_ratio = result["DeFI, as on main"][1] / result["image DP, as on main"][1]
        ratio = result["DeFI (default)"][1]
        print(f"\nact(DeFI) / act(image DP): {main_ratio:.2f} as on main -> {ratio:.2f} by default "
              f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}); "
              f"DeFI {result['DeFI, as on main'][0] / result['DeFI (default)'][0]:.2f}x faster, image DP "
              f"{result['image DP, as on main'][0] / result['image DP'][0]:.2f}x faster than as on main")

        if not args.no_parts:
            parts: dict[str, Callable[[], object]] = {}
            with torch.no_grad():
                for label, policy in (("image DP", dp), ("DeFI", defi), ("image DP, untraced", dp_main),
                                      ("DeFI, training path", defi_plain)):
                    batch = observation_to_batch(obs, INSTRUCTION, policy.metadata, policy.device)
                    for part, fn in policy.timed_parts(batch).items():
                        parts[f"{label}: {part}"] = fn
                timed = interleaved(parts, max(10, args.repeats // 2), next(iter(parts)))
            print("\n| component (interleaved medians) | ms |")
            print("|---|---|")
            for name, (ms, _) in timed.items():
                print(f"| {name} | {ms:.1f} |")
        walk = interleaved({"policy.eval()": defi.eval,
                            "tuple of every tensor": lambda: (*defi.parameters(), *defi.buffers())},
                           args.repeats, "policy.eval()")
        print("\nPython overhead per act as on main, gone now (DeFI's 680 modules): "
              + ", ".join(f"{name} {ms:.2f} ms" for name, (ms, _) in walk.items()) + " (made twice)")


if __name__ == "__main__":
    main()
