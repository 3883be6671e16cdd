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


def paired_difference(a, b, strata=None, clusters=None, n_boot: int = 10_000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """mean(a) - mean(b) over paired units (e.g. the same episode with two settings, or two policies on the same
    positions) with a percentile bootstrap interval.

    `strata`: units are resampled within each stratum (e.g. task), keeping each stratum's size, so the interval
    is for the same task mix. `clusters`: two-level resampling, clusters first (e.g. training seeds), then the units
    of each drawn cluster; use it when units share a source of variation (a trained policy)."""
    import numpy as np

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(diff)
    if n == 0:
        return {"difference": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "pairs": 0}
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    clusters = np.zeros(n, dtype=np.int64) if clusters is None else np.unique(np.asarray(clusters),
                                                                              return_inverse=True)[1]
    cluster_ids = np.unique(clusters)
    groups = {(c, s): np.flatnonzero((clusters == c) & (strata == s)) for c in cluster_ids for s in np.unique(strata)}
    groups = {k: v for k, v in groups.items() if len(v)}
    means = np.empty(n_boot)
    for i in range(n_boot):
        drawn = rng.choice(cluster_ids, size=len(cluster_ids)) if len(cluster_ids) > 1 else cluster_ids
        total, count = 0.0, 0
        for c in drawn:
            for (gc, _), idx in groups.items():
                if gc == c:
                    pick = idx[rng.integers(0, len(idx), len(idx))]
                    total += diff[pick].sum()
                    count += len(pick)
        means[i] = total / count
    alpha = (1 - confidence) / 2
    return {"difference": float(diff.mean()), "ci95_low": float(np.quantile(means, alpha)),
            "ci95_high": float(np.quantile(means, 1 - alpha)), "pairs": n}


def points(d: dict) -> str:
    """A paired_difference() result in percentage points: "+32 [18, 45]"."""
    return (f"{100 * d['difference']:+.0f} [{100 * d['ci95_low']:+.0f}, {100 * d['ci95_high']:+.0f}]"
            if d.get("pairs") else "-")
