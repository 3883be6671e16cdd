"""Issue 13: two policies' evaluations on the same episodes (two `defi eval` / study eval metrics.json files, e.g.
the DeFI arm of two recipe run dirs), paired on (task, episode seed): successes of each and the difference in
points with a 95% bootstrap interval over episodes within tasks (one training seed: the interval does not cover
training-seed variation). MODE=wrong_scene compares the vision check's episodes instead of the real camera's.
Comma-separated lists pool several training seeds (A's i-th file paired with B's i-th; episodes are then resampled
within seed and task, so the interval still does not cover training-seed variation).

    python studies/issue13/paired_runs.py A/eval/metrics.json B/eval/metrics.json
    python studies/issue13/paired_runs.py A0/eval/metrics.json,A1/eval/metrics.json B0/...,B1/...
"""
import json
import os
import sys
from pathlib import Path

from defi.eval.stats import paired_difference

MODE = os.environ.get("MODE", "real")


def successes(paths):
    out = {}
    for index, path in enumerate(paths.split(",")):
        episodes = json.loads(Path(path).read_text())["episodes"]
        out.update({(f"{index}/{e['task']}", e["seed"]): int(e["success"]) for e in episodes
                    if e.get("mode", "real") == MODE})
    return out


a, b = successes(sys.argv[1]), successes(sys.argv[2])
keys = sorted(set(a) & set(b))
d = paired_difference([a[k] for k in keys], [b[k] for k in keys], strata=[k[0] for k in keys])
print(f"{MODE}: {len(keys)} paired episodes; A {sum(a[k] for k in keys)}, B {sum(b[k] for k in keys)}; "
      f"A - B {100 * d['difference']:+.1f} points [{100 * d['ci95_low']:+.1f}, {100 * d['ci95_high']:+.1f}]")
