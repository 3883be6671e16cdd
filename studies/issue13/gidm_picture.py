import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import replace
from defi.data import build_clip_dataset
from defi.experiments.demo.latents import gidm_latent_picture
from defi.train import pretrain_idm

run_dir = Path(sys.argv[1])
cfg = json.loads((run_dir / "config.json").read_text())
d = cfg["data"]
base = pretrain_idm.PretrainIDMConfig.preset("small").data
demos = replace(base, sources=[(str(Path(os.environ.get("ROOT", "runs/issue13")) / "data/demos12"), 1.0)], cameras=tuple(d["cameras"]), interval_s=d["interval_s"],
                action_horizon=d["action_horizon"], val_fraction=0.5, seed=0)
pic = gidm_latent_picture(run_dir / "model", build_clip_dataset(demos, "all"), 1200, run_dir / "latent_actions.png")
print(json.dumps({"run": run_dir.name, **{k: v for k, v in pic.items() if k != "picture"}}), flush=True)
