"""Issue 13, GFDM diagnosis: where does the one-step error come from? Scored on the ceiling check's held-out clips
(`gfdm_nn_ceiling.py`), as ratios to copying the current frame (all clips, moving half):

1. The starting noise. The one-step estimate reads the denoiser once from one noise draw; at the noisiest
   timestep the x0 it predicts should be the conditional mean of the future, the same for every draw. Scored: the
   fixed draw the policy uses, DRAWS independent draws (mean of their ratios), and the average of those estimates.
   If the average is far better than one draw, the denoiser lets the noise through: variance, not a wrong mean.
2. The instruction. The fixed draw with each clip's own instruction, with another task's (the next distinct
   instruction of the evaluated clips) and with an empty one. Equal ratios: the model does not read the text.
3. The terminal-SNR leak. In training, the noisiest input is add_noise(target, noise, t_last), which keeps
   sqrt(alpha_bar[t_last]) of the target unless the schedule has zero terminal SNR; the one-step features start
   from noise alone. The x0 estimate's error in the diffused latents (ratio to the zero prediction, i.e. copying
   the current frame) with the leaked target in the input against without it. A large gap: the model learnt to
   read the leak instead of the current frame (`noise.zero_terminal_snr` removes it).

    python studies/issue13/gfdm_diagnose.py GFDM_RUN_DIR [EVAL_CLIPS] [DRAWS]

SPLIT=train scores the run's training clips instead (does the model fit what it was trained on?).
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
from defi.models.forward import ForwardDynamicsModel, one_step  # noqa: E402
from defi.train.pretrain_fdm import PretrainFDMConfig  # noqa: E402

run = Path(sys.argv[1])
eval_clips = int(sys.argv[2]) if len(sys.argv) > 2 else 256
draws = int(sys.argv[3]) if len(sys.argv) > 3 else 8
cfg = load_config(PretrainFDMConfig, run / "config.json")
split = os.environ.get("SPLIT", "val")
clips = build_clip_dataset(cfg.data, split)
items = [clips[i] for i in evenly_spaced(len(clips), eval_clips)]
images = torch.stack([it["images"] for it in items])  # [n 1 3 h w] uint8
real = torch.stack([it["future_images"][0] for it in items]).double() / 255  # [n f 3 h w]
mask = torch.stack([it["future_mask"] for it in items]).double()  # [n f]
texts = [it["instruction"] for it in items]
model = ForwardDynamicsModel.from_pretrained(run / "model").eval()


def decoded(latents, start):
    current, _ = model._fold_views(images[start:start + 16])
    frames = model.decode_latents(latents, current)
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().double() / 255  # rounded as evaluate_predictions does


def error(pred):  # summed squared error per clip over valid frames
    return (((pred - real) ** 2).sum(dim=(2, 3, 4)) * mask).sum(1)


single, mean = [[] for _ in range(draws)], []
generator = torch.Generator().manual_seed(1)
with torch.no_grad():
    for start in range(0, len(items), 16):
        batch, text = images[start:start + 16], texts[start:start + 16]
        estimates = [one_step(model, batch, text, layers=(), generator=generator)["latents"] for _ in range(draws)]
        for d, est in enumerate(estimates):
            single[d].append(decoded(est, start))
        mean.append(decoded(torch.stack(estimates).mean(0), start))
uniq = sorted(set(texts))
swapped = {"own": texts, "another task's": [uniq[(uniq.index(t) + 1) % len(uniq)] for t in texts], "empty": [""] * len(texts)}
by_text = {}
with torch.no_grad():
    for label, text in swapped.items():
        by_text[label] = torch.cat([decoded(one_step(model, images[s:s + 16], text[s:s + 16], layers=())["latents"], s)
                                    for s in range(0, len(items), 16)])
assert model.config.noise.prediction_type == "sample", "section 3 reads the denoiser's output as the x0 estimate"
leak = {"with the leaked target": 0.0, "from noise alone": 0.0}
zero = 0.0
with torch.no_grad():
    for start in range(0, len(items), 16):
        current, condition, context, _ = model.prepare(images[start:start + 16], texts[start:start + 16])
        target = model.target_latents(current, real[start:start + 16].float() * 2 - 1)
        last = torch.full((target.shape[0],), model.one_step_timestep)
        noise = torch.randn(target.shape, generator=generator)
        weight = mask[start:start + 16, :, None, None, None].float()
        for label, signal in (("with the leaked target", target), ("from noise alone", torch.zeros_like(target))):
            estimate = model.denoise(model.noise_scheduler.add_noise(signal, noise, last), last, condition, context)
            leak[label] += float(((estimate - target) ** 2 * weight).sum())
        zero += float((target ** 2 * weight).sum())
copy = error(images[:, 0].double().div(255).unsqueeze(1).expand_as(real))
moving = copy >= copy.median()
ratio = lambda err: (round(float(err.sum() / copy.sum()), 3), round(float(err[moving].sum() / copy[moving].sum()), 3))
singles = [ratio(error(torch.cat(s))) for s in single]
out = {"run": str(run), "split": split, "eval_clips": len(items), "draws": draws,
       "fixed_draw_over_copy (all, moving)": ratio(error(by_text["own"])),  # the policy's draw, own instruction
       "single_draws_over_copy mean (all, moving)": tuple(round(float(np.mean(v)), 3) for v in zip(*singles)),
       "average_of_draws_over_copy (all, moving)": ratio(error(torch.cat(mean))),
       "distinct_instructions": len(uniq),
       **{f"instruction_{label}_over_copy (all, moving)": ratio(error(pred)) for label, pred in by_text.items()},
       "sqrt_alpha_bar_at_one_step_timestep": round(float(model.noise_scheduler.alphas_cumprod[model.one_step_timestep]
                                                         ** 0.5), 4),
       **{f"latent_x0_{label}_over_zero": round(v / zero, 3) for label, v in leak.items()}}
print(json.dumps(out, indent=2))
