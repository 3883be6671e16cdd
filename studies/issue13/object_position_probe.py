"""Issue 13, why DeFI trails the image diffusion policy on disassemble and push: does what each policy sees hold
where the objects are? Linear (ridge) probes from each input to the positions of the task's objects and goal in
first frames of many scenes (the arm starts in the same pose, so scenes differ only there), per task: 5-fold by
scene, R^2 of the pooled out-of-fold predictions, averaged over the position coordinates that vary by >= 1 mm.

    python studies/issue13/object_position_probe.py RUN_DIR/runs/demos10/seed0 [SCENES]
    TASKS=push-v3,coffee-push-v3 python studies/issue13/object_position_probe.py ...   # some of the study's tasks

Inputs: the raw pixels; for each DeFI arm (pretrained `defi`, no pretraining `defi-scratch`) its frozen frame
tokens (the GIDM's frame encoder), each frozen GFDM block the Video Former reads (one denoising step, every
predicted frame) and everything its action adapter is conditioned on after finetuning (latent actions + Video
Former tokens); for the image DP its finetuned image encoder's tokens. Writes `object_position_probe.json` in the
run dir.

MODE=rollout probes frames along scripted-expert episodes instead (every 20th step of the first 200, SCENES
episodes per task, 5-fold by episode) for where the hand is and where the object is relative to the hand (what a
grasp needs, read from the image alone since no arm of the study sees the proprio state); it writes
`object_position_probe_rollout.json`.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")
from defi.data.instructions import instruction  # noqa: E402
from defi.envs.metaworld import MetaWorldEnv  # noqa: E402
from defi.eval.probes import RIDGE_ALPHAS, _fit, _predict, r2_score  # noqa: E402
from defi.experiments.regime import TASKS  # noqa: E402
from defi.policies.base import load_policy, observation_to_batch, policy_metadata  # noqa: E402

# Meta-World v3 observation: object 1 position [4:7], object 2 position [11:14], goal position [36:39]
POSITION_COLUMNS = (4, 5, 6, 11, 12, 13, 36, 37, 38)
FIRST_SCENE_SEED = 50_000  # away from the demonstrations' (1000+) and evaluation scenes' seeds
FOLDS = 5
MIN_STD_M = 1e-3
ROLLOUT_FRAMES = range(0, 200, 20)
ROLLOUT_COLUMNS = ("hand x", "hand y", "hand z", "object - hand x", "object - hand y", "object - hand z")

rollout = os.environ.get("MODE", "first") == "rollout"
if len(sys.argv) < 2:
    sys.exit("usage: object_position_probe.py RUN_DIR/runs/demosN/seedS [SCENES]  (see the docstring)")
seed_dir = Path(sys.argv[1])
scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 100
ARMS = ("defi", "defi-scratch", "image_dp")
policies = {arm: load_policy(seed_dir / arm / "model", device="cpu").eval()
            for arm in ARMS if (seed_dir / arm / "model").exists()}
if not policies:
    sys.exit(f"{seed_dir}: no finetuned policy found (expected one of {', '.join(a + '/model' for a in ARMS)})")
meta = policy_metadata(next(iter(policies.values())))


@torch.no_grad()
def features(batch: dict) -> dict[str, torch.Tensor]:
    out = {"pixels": batch["images"].float().flatten(1)}
    for arm, policy in policies.items():
        if arm == "image_dp":
            out["image DP: finetuned image encoder"] = policy.encode_images(batch["images"]).flatten(1)
            continue
        # the frozen parts run once; `condition` reads their outputs back as finetuning's feature cache does
        frozen = policy.frozen_features(batch)
        out[f"{arm}: frozen frame tokens"] = frozen["current_tokens"].flatten(1)
        for name in policy.config.video_former.layers:
            out[f"{arm}: frozen GFDM {name}"] = frozen[f"gfdm.{name}"].flatten(1)
        cached = {**batch, **{f"cache.{key}": value for key, value in frozen.items()}}
        out[f"{arm}: adapter condition (finetuned)"] = policy.condition(cached)[0].flatten(1)
    return out


def out_of_fold(x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor) -> torch.Tensor:
    """Each scene predicted by a ridge fitted on the other folds; alpha chosen on a held-out fold of those."""
    pred = torch.empty_like(y)
    for k in range(FOLDS):
        train = folds != k
        inner = folds[train] == (k + 1) % FOLDS
        xt, yt = x[train], y[train]
        alpha = max(RIDGE_ALPHAS, key=lambda a: r2_score(_predict(_fit(xt[~inner], yt[~inner], a), xt[inner]),
                                                         yt[inner]))
        pred[folds == k] = _predict(_fit(xt, yt, alpha), x[folds == k])
    return pred


result: dict = {"mode": "rollout" if rollout else "first", "scenes_per_task": scenes, "folds": FOLDS,
                "arms": list(policies), "tasks": {}}
tasks = os.environ["TASKS"].split(",") if os.environ.get("TASKS") else list(TASKS)
for task in tasks:
    rows, targets, episode = [], [], []
    with MetaWorldEnv(task, seed=0, cameras=meta.cameras, image_size=meta.image_size) as env:
        for i in tqdm(range(scenes), desc=task, unit="episode" if rollout else "scene"):
            obs = env.reset(seed=FIRST_SCENE_SEED + i)
            for step in range(max(ROLLOUT_FRAMES) + 1 if rollout else 1):
                if step in ROLLOUT_FRAMES:
                    obs = env.observation() if step else obs
                    rows.append(features(observation_to_batch(obs, instruction(task), meta)))
                    state = obs["observation.environment_state"]
                    targets.append(np.concatenate([state[0:3], state[4:7] - state[0:3]]) if rollout
                                   else state[list(POSITION_COLUMNS)])
                    episode.append(i)
                if rollout:
                    env.step(env.expert_action(), render=False)
    columns = ROLLOUT_COLUMNS if rollout else POSITION_COLUMNS
    y = torch.from_numpy(np.stack(targets)).double()
    varying = (y.std(0) > MIN_STD_M).nonzero().flatten()
    y = y[:, varying]
    folds = torch.tensor(episode) % FOLDS
    task_out = {"varying_columns": [columns[i] for i in varying.tolist()], "samples": len(rows),
                "std_mm": [round(1000 * v, 1) for v in y.std(0).tolist()], "r2": {}}
    for name in rows[0]:
        x = torch.cat([r[name] for r in rows]).double()
        pred = out_of_fold(x, y, folds)
        task_out["r2"][name] = round(r2_score(pred, y), 3)
        task_out.setdefault("r2_per_column", {})[name] = [round(r2_score(pred[:, i:i + 1], y[:, i:i + 1]), 3)
                                                          for i in range(y.shape[1])]
        task_out.setdefault("dims", {})[name] = x.shape[1]
    result["tasks"][task] = task_out
    print(task, task_out["varying_columns"], task_out["std_mm"], json.dumps(task_out["r2"]), flush=True)

names = list(next(iter(result["tasks"].values()))["r2"])
result["mean_r2"] = {n: round(float(np.mean([t["r2"][n] for t in result["tasks"].values()])), 3) for n in names}
print("\n| input | dims | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " | mean |")
print("|---" * (len(tasks) + 3) + "|")
for n in names:
    dims = result["tasks"][tasks[0]]["dims"][n]
    print(f"| {n} | {dims} | " + " | ".join(f"{result['tasks'][t]['r2'][n]:.2f}" for t in tasks)
          + f" | {result['mean_r2'][n]:.2f} |")
for t in tasks:
    print(f"\n{t} per column {result['tasks'][t]['varying_columns']}:")
    for n in names:
        print(f"  {n}: {result['tasks'][t]['r2_per_column'][n]}")
(seed_dir / f"object_position_probe{'_rollout' if rollout else ''}.json").write_text(json.dumps(result, indent=1))
