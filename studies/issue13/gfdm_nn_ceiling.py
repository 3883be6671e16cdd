"""Issue 13, GFDM target check: how far below copy-the-current-frame can a plain nearest-neighbour predictor get on
the GFDM's own held-out clips? For each held-out clip, the k training clips of the same instruction whose current
frame is nearest in pixels give their future; two predictions: their futures averaged, and the current frame plus
their average change (future - their current). Scored like `evaluate_predictions` (MSE over valid future pixels in
[0, 1], ratio to copy), on all clips and on the moving half. If no k gets near 0.6x, the target asks for more than
the data's nearest neighbours hold at this resolution and horizon. The run's own GFDM (RUN_DIR/gfdm/model) and any
other GFDM run dirs given after the counts are scored on the same clips with their one-step estimate.

    python studies/issue13/gfdm_nn_ceiling.py RUN_DIR/gfdm [TRAIN_CLIPS] [EVAL_CLIPS] [OTHER_GFDM_RUN_DIR ...]

ANY_INSTRUCTION=1 lets neighbours come from any instruction: how much the instruction adds to the frame.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from defi.config import load_config  # noqa: E402
from defi.data import build_clip_dataset  # noqa: E402
from defi.data.clips import evenly_spaced  # noqa: E402
from defi.models.forward import ForwardDynamicsModel, predict_one_step  # noqa: E402
from defi.models.forward.modeling import to_uint8  # noqa: E402
from defi.train.pretrain_fdm import PretrainFDMConfig  # noqa: E402

run = Path(sys.argv[1])
train_clips = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
eval_clips = int(sys.argv[3]) if len(sys.argv) > 3 else 256
cfg = load_config(PretrainFDMConfig, run / "config.json")
train, val = build_clip_dataset(cfg.data, "train"), build_clip_dataset(cfg.data, "val")


def gather(dataset, indices):
    cur, fut, mask, text = [], [], [], []
    for i in indices:
        item = dataset[i]
        cur.append(item["images"][0].numpy())
        fut.append(item["future_images"][0].numpy())
        mask.append(item["future_mask"].numpy())
        text.append(item["instruction"])
    return np.stack(cur).astype(np.float32) / 255, np.stack(fut).astype(np.float32) / 255, np.stack(mask), text


tc, tf, tm, tt = gather(train, evenly_spaced(len(train), train_clips))
vc, vf, vm, vt = gather(val, evenly_spaced(len(val), eval_clips))
flat = tc.reshape(len(tc), -1)
out = {"train_clips": len(tc), "eval_clips": len(vc)}
sq = lambda pred: ((pred - vf) ** 2).sum(axis=(2, 3, 4)) * vm  # [n f] summed squared error on valid frames
copy = sq(np.repeat(vc[:, None], vf.shape[1], 1)).sum(1)
moving = copy >= np.median(copy)
complete = tm[:, -1] > 0  # neighbours with every future frame valid
train_text = np.array(tt)
any_instruction = os.environ.get("ANY_INSTRUCTION") == "1"
out["neighbours_of_any_instruction"] = any_instruction
pools = [np.flatnonzero(((train_text == text) | any_instruction) & complete) for text in vt]
# an instruction the training sample lacks (or has fewer than k complete clips of): any clip, counted below
out["eval_clips_without_same_instruction"] = sum(len(p) == 0 for p in pools)
for k in (1, 5, 20):
    avg_future, delta = np.zeros_like(vf), np.zeros_like(vf)
    for row in range(len(vc)):
        pool = pools[row] if len(pools[row]) >= k else np.flatnonzero(complete)
        d = ((flat[pool] - vc[row].reshape(1, -1)) ** 2).sum(1)
        near = pool[np.argsort(d)[:k]]
        avg_future[row] = tf[near].mean(0)
        delta[row] = np.clip(vc[row][None] + (tf[near] - tc[near][:, None]).mean(0), 0, 1)
    for name, pred in (("future", avg_future), ("current_plus_change", delta)):
        err = sq(pred).sum(1)
        out[f"k{k}_{name}_over_copy"] = round(float(err.sum() / copy.sum()), 3)
        out[f"k{k}_{name}_moving_over_copy"] = round(float(err[moving].sum() / copy[moving].sum()), 3)
for other in [run, *map(Path, sys.argv[4:])]:
    model = ForwardDynamicsModel.from_pretrained(other / "model").eval()
    pred = []
    with torch.no_grad():
        for start in range(0, len(vc), 16):
            images = torch.from_numpy((vc[start:start + 16] * 255).round().astype(np.uint8))[:, None]
            frames = predict_one_step(model, images, vt[start:start + 16])[:, 0]
            pred.append(to_uint8(frames).numpy().astype(np.float32) / 255)  # rounded as evaluate_predictions does
    err = sq(np.concatenate(pred)).sum(1)
    out[f"gfdm_one_step_over_copy[{other}]"] = round(float(err.sum() / copy.sum()), 3)
    out[f"gfdm_one_step_moving_over_copy[{other}]"] = round(float(err[moving].sum() / copy[moving].sum()), 3)
print(json.dumps(out, indent=2))
