"""Does the GIDM's decoder use its latent action? Decoded-future MSE with each clip's own latent action, another
clip's (shuffled), and the mean latent, on demo clips the GIDM never trained on."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from defi.config import replace
from defi.data import build_clip_dataset
from defi.models.inverse import GIDM
from defi.train import pretrain_idm
from defi.train.pretrain_idm import GIDMPretrainModule, encode_clips

run_dir = Path(sys.argv[1])
d = json.loads((run_dir / "config.json").read_text())["data"]
base = pretrain_idm.PretrainIDMConfig.preset("small").data
demos = replace(base, sources=[(str(Path(os.environ.get("ROOT", "runs/issue13")) / "data/demos12"), 1.0)], cameras=tuple(d["cameras"]), interval_s=d["interval_s"],
                action_horizon=d["action_horizon"], val_fraction=0.5, seed=0)
ds = build_clip_dataset(demos, "all")
gidm = GIDM.from_pretrained(run_dir / "model").eval()
module = GIDMPretrainModule(gidm, 0)
idx = np.unique(np.linspace(0, len(ds) - 1, 600).round().astype(int)).tolist()
cached = encode_clips(gidm, ds, 0, idx, desc="enc")
res = {"own": [], "shuffled": [], "mean": [], "copy": []}
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for s in range(0, len(cached), 100):
        cur, fut, tok, mask = module.inputs(cached.batch(slice(s, s + 100)))
        feats, _ = gidm.infer_latent_actions(cur, fut, tok, mask)
        perm = torch.randperm(len(cur), generator=g)
        for name, f in (("own", feats), ("shuffled", feats[perm]), ("mean", feats.mean(0, keepdim=True).expand_as(feats))):
            res[name].append(((gidm.decode(cur, f) - fut) ** 2).mean().item())
        res["copy"].append(((cur - fut) ** 2).mean().item())
out = {k: float(np.mean(v)) for k, v in res.items()}
out = {**out, **{f"{k}_over_copy": out[k] / out["copy"] for k in ("own", "shuffled", "mean")}}
print(json.dumps({"run": run_dir.name, **out}))
