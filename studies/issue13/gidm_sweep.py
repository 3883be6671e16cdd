"""GIDM design sweep for issue 13: codebook size / tokens / normalised codes, on the study-1 corpus, scored on the
12-task demonstrations (probe to the true actions, codebook usage, latent actions -> end-effector displacement)."""
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import replace
from defi.data import build_clip_dataset
from defi.experiments.demo.latents import gidm_latent_picture
from defi.train import pretrain_idm

R = Path(os.environ.get("ROOT", "runs/issue13")) / "study1"
VARIANTS = {
    "cb16": dict(codebook_size=16),
    "cb16-q8": dict(codebook_size=16, queries=8),
    "cb128-cos": dict(codebook_size=128, normalize=True),
    "cb128": dict(codebook_size=128),
    "cb128-cos-q8": dict(codebook_size=128, normalize=True, queries=8),
}
names = sys.argv[1:] or list(VARIANTS)
steps = 2000
for name in names:
    v = VARIANTS[name]
    cfg = pretrain_idm.PretrainIDMConfig.preset("small")
    model = replace(cfg.model, camera="workspace_close", num_action_queries=v.get("queries", 4),
                    quantizer=replace(cfg.model.quantizer, codebook_size=v["codebook_size"],
                                      normalize=v.get("normalize", False)))
    data = replace(cfg.data, sources=[(str(R / "data/corpus"), 3.0), (str(R / "data/corpus-other"), 1.0)],
                   cameras=("workspace_close",), interval_s=0.4, action_horizon=32, val_fraction=0.05, seed=0)
    run_dir = Path(os.environ.get("ROOT", "runs/issue13")) / f"runs/gidm-{name}"
    cfg = replace(cfg, run_dir=run_dir, data=data, model=model,
                  trainer=replace(cfg.trainer, max_steps=steps, checkpoint_every=500, eval_every=1000, progress=False),
                  resume=(run_dir / "checkpoints").is_dir())
    demos = replace(data, sources=[(str(Path(os.environ.get("ROOT", "runs/issue13")) / "data/demos12"), 1.0)], val_fraction=0.5)
    t = time.time()
    if not (run_dir / "metrics.json").is_file():
        pretrain_idm.run(cfg, {"val": build_clip_dataset(demos, "val"), "probe": build_clip_dataset(demos, "train")})
    held = json.loads((run_dir / "metrics.json").read_text())["held_out"]
    pic = gidm_latent_picture(run_dir / "model", build_clip_dataset(demos, "all"), 1200, run_dir / "latent_actions.png")
    keys = ("mse_over_copy", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action", "probe_r2_feature_diff")
    print(json.dumps({"variant": name, "wall_s": round(time.time() - t), **{k: held.get(k) for k in keys},
                      **{k: pic[k] for k in pic if k.startswith("ee_") or k.startswith("codes")}}), flush=True)
