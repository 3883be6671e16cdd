"""Per-component inference latency of a policy, shaped like paper Table 13, plus the whole `act` step.

Batch 1, the policy's own cameras; each figure is the median of `repeats` timed calls after three warm-up calls.
The components are the policy's own (`policy.timed_parts(batch)`), so this module knows nothing of how a policy
is built. Used by `benchmarks/bench_policy.py` (random weights at a preset) and by the demo report.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from defi.policies.base import observation_to_batch, policy_metadata

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
    meta = policy_metadata(policy)
    policy.eval()
    h, w = meta.image_size
    rng = np.random.default_rng(0)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta.cameras}
    obs["observation.state"] = np.zeros(meta.state_dim, np.float32)
    batch = observation_to_batch(obs, instruction, meta, policy.device)
    with torch.no_grad():
        rows = {name: timed(fn, repeats) for name, fn in policy.timed_parts(batch).items()}
    whole = timed(lambda: policy.act(obs, instruction), repeats)
    parts = getattr(policy, "components", ()) or tuple(name for name, _ in policy.named_children())
    params = {name: sum(p.numel() for p in getattr(policy, name).parameters()) / 1e6 for name in parts}
    return {"rows": rows, "whole_ms": whole, "sum_of_parts_ms": sum(rows.values()),
            "threads": torch.get_num_threads(), "repeats": repeats, "parameters_m": params}


def latency_table(result: dict[str, Any]) -> str:
    lines = ["| component | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result["rows"].items()]
    whole = result["whole_ms"]
    lines.append(f"| **{WHOLE_STEP}** | **{whole:.1f}** ({1000 / whole:.1f} Hz) |")
    return "\n".join(lines)
