"""Success-rate statistics: Wilson score intervals, which stay inside [0, 1] and behave at 0/N and N/N, where
the normal approximation claims a zero-width interval."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    if trials <= 0:
        return (0.0, 1.0)
    z = {0.90: 1.6448536, 0.95: 1.9599640, 0.99: 2.5758293}.get(round(confidence, 2))
    if z is None:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(successes: list[bool], confidence: float = 0.95) -> dict[str, float | int]:
    n, k = len(successes), int(sum(successes))
    low, high = wilson_interval(k, n, confidence)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else float("nan"),
            "pc_success": 100.0 * k / n if n else float("nan"), "ci95_low": low, "ci95_high": high}
