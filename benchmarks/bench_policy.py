"""Per-component inference latency of the DeFI policy, shaped like paper Table 13, plus the whole `act` step.

    python benchmarks/bench_policy.py [--preset small] [--repeats 20] [--threads 1]

Components (batch 1, one camera unless the preset has more): the GFDM's one-step features, the frame encoder,
the MLP + GIDM encoder, the Video Former, the adapter's 10-step sampling, and a whole `policy.act` call; the
target for the CPU preset is a whole step <= 50 ms (20 Hz). Each figure is the median of `repeats` timed calls
after warm-up. The image diffusion policy of the same preset (random weights, the same compute as trained ones)
is the baseline: its whole `act` is timed in turn with DeFI's, and their ratio is printed (it holds across
machines; milliseconds do not), with the CPU model, its ISA flags and the thread count. The whole-step figure is
also compared with the sum of its parts. benchmarks/bench_step.py measures the inference optimisations one by one.
"""

from __future__ import annotations

import argparse

import torch

from defi.eval.latency import latency_table, policy_latency
from defi.models.traced import tracing_status
from defi.policies.defi import DeFIConfig, DeFIPolicy
from defi.policies.image_dp import ImageDPConfig, ImageDPPolicy


def random_policy(cls, cfg):
    policy = cls(cfg).eval()
    stats = {"mean": [0.0] * cfg.action_dim, "std": [1.0] * cfg.action_dim,
             "min": [-1.0] * cfg.action_dim, "max": [1.0] * cfg.action_dim}
    sstats = {k: [v[0]] * cfg.state_dim for k, v in stats.items()}
    policy.normalizer.set_stats({"action": stats, **({"observation.state": sstats} if cfg.state_dim else {})})
    return policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=DeFIConfig.preset_names())
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = random_policy(DeFIPolicy, DeFIConfig.preset(args.preset))
    baseline = random_policy(ImageDPPolicy, ImageDPConfig.preset(args.preset))
    result = policy_latency(policy, args.repeats, baseline=baseline)
    whole, parts = result["whole_ms"], result["sum_of_parts_ms"]
    print(f"DeFI policy latency, preset {args.preset!r}, batch 1, {result['threads']} threads, "
          f"device cpu, median of {args.repeats}; {tracing_status()}")
    print(latency_table(result))
    print(f"sum of parts {parts:.1f} ms; whole/parts = {whole / parts:.2f}; target <= 50 ms: "
          f"{'met' if whole <= 50 else 'NOT met'}; act(DeFI) / act(image DP) = {result['baseline']['ratio']:.2f} "
          "(issue 14 target <= 1.3)")
    print("parameters (M): " + ", ".join(f"{k} {v:.2f}" for k, v in result["parameters_m"].items()))


if __name__ == "__main__":
    main()
