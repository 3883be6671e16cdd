"""Issue 13, GIDM: what does a linear probe to end-effector displacement get from each input? The latent action
alone, the encoder's output before the bottleneck (is the motion lost in quantisation?), its codes one-hot (a
lookup table, whatever the code vectors' geometry; for FSQ one-hot per dimension's level), the current frame's features alone, and each combined with the current frame (the policy always sees o_t next to the latent action), against the
feature difference e_{t+n} - e_t. Same split as `gidm_latent_picture` (half of the episodes fit, half score).

    python studies/issue13/gidm_context_probe.py RUN_DIR/gidm/model RUN_DIR/data/demos
    SPLITS=20 python studies/issue13/gidm_context_probe.py ...   # also: latent - feature difference over 20 splits

One split of the episodes is one draw: with SPLITS=N the end-effector motion probes of the latent action, the
encoder output and the feature difference are refitted on N seeded episode splits (seed 0 is the split above), and
the paired differences to the feature difference are summarised (mean, min, max, how many splits are above zero).
"""
import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import replace  # noqa: E402
from defi.data import build_clip_dataset  # noqa: E402
from defi.eval.probes import ridge_probe  # noqa: E402
from defi.experiments.demo.latents import _ee_motion  # noqa: E402
from defi.models.inverse import GIDM  # noqa: E402
from defi.train.pretrain_idm import GIDMPretrainModule, PretrainIDMConfig, encode_clips  # noqa: E402

gidm_dir, demos = Path(sys.argv[1]), sys.argv[2]
gidm = GIDM.from_pretrained(gidm_dir).eval()
data = replace(PretrainIDMConfig.preset("small").data, sources=[(demos, 1.0)], cameras=(gidm.config.camera,),
               interval_s=0.4, action_horizon=32, val_fraction=0.5)
dataset = build_clip_dataset(data, "all")
indices = list(range(len(dataset)))[:: max(1, len(dataset) // 1200)]
cached = encode_clips(gidm, dataset, 0, indices, progress=False)
module = GIDMPretrainModule(gidm, 0)
rows = {k: [] for k in ("latent", "pre", "onehot", "current", "future", "diff")}
with torch.no_grad():
    for start in range(0, len(cached), 128):
        current, future, tokens, mask = module.inputs(cached.batch(slice(start, start + 128)))
        out = gidm.encode(current, future, tokens, mask)
        features, codes = out.features, out.codes
        rows["latent"].append(features.float().flatten(1))
        rows["pre"].append(out.pre_quant.float().flatten(1))
        quantizer = gidm.config.quantizer
        k = quantizer.num_bins if quantizer.kind == "binning" else quantizer.num_codes  # binning codes: bin ids
        if codes is None:  # a continuous latent has no codes: its one-hot rows are the latent itself
            rows["onehot"].append(features.float().flatten(1))
        elif quantizer.kind == "fsq":  # one-hot per dimension's level (a 1000-way one-hot would be too sparse)
            digits, radix = [], 1
            for level in quantizer.levels:
                digits.append(torch.nn.functional.one_hot((codes // radix) % level, level).float().flatten(1))
                radix *= level
            rows["onehot"].append(torch.cat(digits, 1))
        else:
            rows["onehot"].append(torch.nn.functional.one_hot(codes.reshape(codes.shape[0], -1), k).float().flatten(1))
        rows["current"].append(current.float().mean(1))
        rows["future"].append(future.float().mean(1))
        rows["diff"].append((future - current).float().mean(1))
x = {k: torch.cat(v) for k, v in rows.items()}
y = torch.from_numpy(_ee_motion(dataset, indices))
episodes = cached.fields["episode_index"]
uniq = episodes.unique(sorted=True)


def split(seed: int) -> torch.Tensor:
    held = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(seed))[: len(uniq) // 2]]
    return torch.isin(episodes, held)


test = split(0)
inputs = {
    "latent action": x["latent"], "encoder output before quantisation": x["pre"], "codes one-hot": x["onehot"],
    "current frame": x["current"],
    "latent action + current frame": torch.cat([x["latent"], x["current"]], 1),
    "codes one-hot + current frame": torch.cat([x["onehot"], x["current"]], 1),
    "feature difference": x["diff"], "current + future frame": torch.cat([x["current"], x["future"]], 1),
}
out = {name: round(ridge_probe(v[~test], y[~test], v[test], y[test])["r2"], 3) for name, v in inputs.items()}
# what else do the codes carry? where the arm ends up (absolute), and which task it is (one-hot of the instruction)
future_position = torch.zeros(len(indices), 3)
for row, index in enumerate(indices):
    episode, t = dataset.locate(index)
    states = dataset.store.read_episode(episode, "observation.state")
    future_position[row] = torch.from_numpy(states[min(t + dataset.goal_offset, len(states) - 1), :3])
instructions = list(cached.fields["instruction"])  # kept by encode_clips: no clip is decoded again
names = sorted(set(instructions))
task = torch.nn.functional.one_hot(torch.tensor([names.index(i) for i in instructions]), len(names)).float()
other = {}
for target_name, target in (("ee_future_position_r2", future_position), ("task_one_hot_r2", task)):
    other[target_name] = {name: round(ridge_probe(inputs[name][~test], target[~test], inputs[name][test],
                                                  target[test])["r2"], 3)
                          for name in ("latent action", "codes one-hot", "current frame", "feature difference")}
splits = {}
n_splits = int(os.environ.get("SPLITS", "1"))
if n_splits > 1:
    r2 = {name: [] for name in ("latent action", "encoder output before quantisation", "feature difference")}
    for seed in range(n_splits):
        mask = split(seed)
        for name in r2:
            r2[name].append(ridge_probe(inputs[name][~mask], y[~mask], inputs[name][mask], y[mask])["r2"])
    for name in ("latent action", "encoder output before quantisation"):
        diff = torch.tensor(r2[name]) - torch.tensor(r2["feature difference"])
        splits[f"{name} - feature difference"] = {
            "mean": round(float(diff.mean()), 3), "min": round(float(diff.min()), 3), "max": round(float(diff.max()), 3),
            "splits_above_zero": f"{int((diff > 0).sum())} of {n_splits}"}
    splits["feature difference r2 mean"] = round(sum(r2["feature difference"]) / n_splits, 3)
print(json.dumps({"clips": len(indices), "ee_motion_r2": out, **other, **({"splits": splits} if splits else {})},
                 indent=2))
