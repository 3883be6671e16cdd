"""Per-component inference latency of a policy, shaped like paper Table 13, plus the whole `act` step.

Batch 1, the policy's own cameras; each figure is the median of `repeats` timed calls after `WARMUP` calls.
The components are the policy's own (`policy.timed_parts(batch)`), so this module knows nothing of how a policy
is built. Figures depend on the machine, so a result records it (`cpu_description`: CPU model, ISA flags, torch
threads) and, given a `baseline` policy, the baseline's whole `act` timed in alternation with the policy's, and
their ratio (which holds across machines far better than milliseconds do). Used by `benchmarks/bench_policy.py`
(random weights at a preset) and by the demo report.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from defi.policies.base import observation_to_batch, policy_metadata
from defi.utils.environment import cpu_description, describe_cpu

WHOLE_STEP = "whole act() step"
# warm-up calls: a traced inference graph runs eagerly twice, is traced at its third call and optimised by
# TorchScript at its fourth (defi.models.traced)
WARMUP = 5


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of `fn` after `WARMUP` warm-up calls."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _observation(meta: Any) -> dict[str, np.ndarray]:
    h, w = meta.image_size
    rng = np.random.default_rng(0)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta.cameras}
    obs["observation.state"] = np.zeros(meta.state_dim, np.float32)
    return obs


def paired(fns: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each of `fns` over `repeats` rounds, the functions called in turn within a round (after
    `WARMUP` warm-up rounds), so that a change of machine load hits them alike."""
    for _ in range(WARMUP):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def policy_latency(policy: Any, repeats: int = 20, instruction: str = "push the puck to the goal",
                   baseline: Any | None = None) -> dict[str, Any]:
    """{"rows": {component: ms}, "whole_ms", "sum_of_parts_ms", "threads", "cpu", "parameters_m": {part: M}}, and
    with a `baseline` policy, "baseline": {"policy_type", "whole_ms", "ratio"}: its whole `act` timed in turn with
    the policy's, and the median of the per-round ratios policy / baseline."""
    meta = policy_metadata(policy)
    policy.eval()
    obs = _observation(meta)
    batch = observation_to_batch(obs, instruction, meta, policy.device)
    with torch.no_grad():
        rows = {name: timed(fn, repeats) for name, fn in policy.timed_parts(batch).items()}
    fns = {"policy": lambda: policy.act(obs, instruction)}
    if baseline is not None:
        baseline.eval()
        base_obs = _observation(policy_metadata(baseline))
        fns["baseline"] = lambda: baseline.act(base_obs, instruction)
    times = paired(fns, repeats)
    whole = statistics.median(times["policy"])
    parts = getattr(policy, "components", ()) or tuple(name for name, _ in policy.named_children())
    params = {name: sum(p.numel() for p in getattr(policy, name).parameters()) / 1e6 for name in parts}
    out = {"rows": rows, "whole_ms": whole, "sum_of_parts_ms": sum(rows.values()),
           "threads": torch.get_num_threads(), "cpu": cpu_description(), "repeats": repeats,
           "parameters_m": params}
    if baseline is not None:
        out["baseline"] = {"policy_type": policy_metadata(baseline).policy_type,
                           "whole_ms": statistics.median(times["baseline"]),
                           "ratio": statistics.median(a / b for a, b in zip(times["policy"], times["baseline"]))}
    return out


def latency_table(result: dict[str, Any]) -> str:
    lines = []
    if "cpu" in result:  # results written before the machine was recorded have no line
        lines += [describe_cpu(description=result["cpu"]), ""]
    lines += ["| component | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result["rows"].items()]
    whole = result["whole_ms"]
    lines.append(f"| **{WHOLE_STEP}** | **{whole:.1f}** ({1000 / whole:.1f} Hz) |")
    base = result.get("baseline")
    if base:
        lines.append(f"| {base['policy_type']} baseline, {WHOLE_STEP} (same run, in turn) | {base['whole_ms']:.1f} "
                     f"(ratio {base['ratio']:.2f}) |")
    return "\n".join(lines)
