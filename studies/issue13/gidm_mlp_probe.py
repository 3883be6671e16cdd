"""Is end-effector motion in the GIDM's latent actions but not linearly? A 2-layer MLP probe next to the ridge
probe, latent action vs frame-feature difference, fitted on half of the demo episodes and scored on the other half
(the split of defi.experiments.demo.latents)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from defi.config import replace
from defi.data import build_clip_dataset
from defi.eval.probes import ridge_probe
from defi.experiments.demo.latents import _ee_motion
from defi.models.inverse import GIDM
from defi.train import pretrain_idm
from defi.train.pretrain_idm import GIDMPretrainModule, encode_clips

run_dir = Path(sys.argv[1])
d = json.loads((run_dir / "config.json").read_text())["data"]
base = pretrain_idm.PretrainIDMConfig.preset("small").data
demos = replace(base, sources=[(str(Path(os.environ.get("ROOT", "runs/issue13")) / "data/demos12"), 1.0)],
                cameras=tuple(d["cameras"]), interval_s=d["interval_s"], action_horizon=d["action_horizon"],
                val_fraction=0.5, seed=0)
ds = build_clip_dataset(demos, "all")
gidm = GIDM.from_pretrained(run_dir / "model").eval()
module = GIDMPretrainModule(gidm, 0)
idx = np.unique(np.linspace(0, len(ds) - 1, 1200).round().astype(int)).tolist()
cached = encode_clips(gidm, ds, 0, idx, desc="enc")
feats, diffs = [], []
with torch.no_grad():
    for s in range(0, len(cached), 128):
        cur, fut, tok, mask = module.inputs(cached.batch(slice(s, s + 128)))
        f, _ = gidm.infer_latent_actions(cur, fut, tok, mask)
        feats.append(f.float().flatten(1)); diffs.append((fut - cur).mean(1).float())
y = torch.from_numpy(_ee_motion(ds, idx)).float()
episodes = cached.fields["episode_index"]
uniq = episodes.unique(sorted=True)
held = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(0))[: len(uniq) // 2]]
test = torch.isin(episodes, held)


def mlp_r2(x, y):
    torch.manual_seed(0)
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-6
    ym, ys = y[~test].mean(0), y[~test].std(0) + 1e-9
    xn, yn = (x - mu) / sd, (y - ym) / ys
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(2000):
        loss = ((net(xn[~test]) - yn[~test]) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        pred = net(xn[test])
    return float(1 - ((pred - yn[test]) ** 2).sum() / ((yn[test] - yn[test].mean(0)) ** 2).sum())


out = {"run": run_dir.name}
for name, x in (("latent_action", torch.cat(feats)), ("feature_diff", torch.cat(diffs))):
    out[f"ridge_r2_{name}"] = ridge_probe(x[~test], y[~test], x[test], y[test])["r2"]
    out[f"mlp_r2_{name}"] = mlp_r2(x, y)
print(json.dumps(out), flush=True)
