"""Success-rate statistics: Wilson score intervals (they stay inside [0, 1] and behave at 0/N and N/N, where the
normal approximation claims a zero-width interval), Newcombe's interval for a difference of two rates, and the
verdict on an ordering a paper states ("A > B": held / within noise / reversed)."""

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


def difference_interval(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's 95% interval (method 10, from the Wilson intervals of each rate)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def verdict(better: str, worse: str, rows: dict[str, dict], names: dict[str, str] | None = None) -> dict:
    """Did `better` beat `worse` as the paper says? rows: label -> {"overall": summarise() output}."""
    names = names or {}
    a, b = rows[better]["overall"], rows[worse]["overall"]
    d, low, high = difference_interval(a["successes"], a["episodes"], b["successes"], b["episodes"])
    if d > 0:
        status = "held" if low > 0 else "held in direction, within noise"
    elif d == 0:
        status = "tie (not reproduced)"
    else:
        status = "reversed" if high < 0 else "not reproduced (reversed, within noise)"
    text = (f"{names.get(better, better)} > {names.get(worse, worse)}: {status} "
            f"({100 * a['success_rate']:.0f}% vs {100 * b['success_rate']:.0f}%, difference {100 * d:+.0f} points, "
            f"95% CI [{100 * low:+.0f}, {100 * high:+.0f}])")
    return {"better": better, "worse": worse, "status": status, "difference": d, "ci95": [low, high], "text": text}


def pct(s: dict) -> str:
    """A summarise() result as "45% [31, 60]"."""
    return f"{100 * s['success_rate']:.0f}% [{100 * s['ci95_low']:.0f}, {100 * s['ci95_high']:.0f}]"
