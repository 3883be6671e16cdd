"""Issue 13: the study's report over every demo count and seed asked for, from the runs that have finished.

A `defi study` call reports on its own --demo-counts / --train-seeds, so an extension call (e.g. seed 0 at 2 and
5 demos) rewrites study.md for that subset only; this rewrites study.md / study.json / the curve over all of them
(counts or seeds that have not run are left out, and a count's heading names the seeds it has).

    ROOT=runs/issue13 python studies/issue13/report_all.py            # demo counts 2 5 10, seeds 0 1 2
"""
import json
import os
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import from_dict, replace  # noqa: E402
from defi.experiments.study import StudyConfig, resolve, stage_report  # noqa: E402

root = Path(os.environ.get("ROOT", "runs/issue13")) / "study1"
saved = {k: v for k, v in json.loads((root / "config.json").read_text()).items() if k != "_type"}
cfg = resolve(replace(from_dict(StudyConfig, saved), demo_counts=(2, 5, 10), train_seeds=(0, 1, 2)))
stage_report(cfg)
print((root / "study.md").read_text())
