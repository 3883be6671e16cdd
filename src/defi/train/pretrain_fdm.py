"""Stage `defi pretrain-fdm`: pretrain the General Forward Dynamics Model on clips (paper §3.1, eq. 3).

Trains with the shared `Trainer` on any map-style clip dataset (the defi.data contract: "images" uint8
[V,3,h,w], "future_images" uint8 [V,F,3,h,w], "future_mask" bool [F], "instruction" str). Every
`trainer.eval_every` steps (and at the end) it samples futures for a fixed set of held-out clips with the
multi-step sampler and with one denoising step, writes `gifs/step_NNNNNNN.gif` (per clip and view:
real | sampled | one-step, frame 0 = o_t), and logs decoded-pixel MSE / PSNR of both and of the
copy-the-current-frame baseline. The run ends with
`model/` (from_pretrained-loadable) and `metrics.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from defi.config import Config, parse_cli
from defi.errors import ConfigError
from defi.data.config import DataConfig, data_paper, data_small, data_tiny
from defi.models.forward.config import ForwardDynamicsConfig
from defi.models.forward.config import paper as model_paper
from defi.models.forward.config import small as model_small
from defi.models.forward.config import tiny as model_tiny
from defi.models.forward.model import ForwardDynamicsModel, build_forward_model, to_uint8
from defi.train.trainer import Trainer, TrainerConfig


@dataclass
class ForwardEvalConfig(Config):
    clips: int = 32  # held-out clips scored at every evaluation (evenly spaced over the held-out split)
    gif_clips: int = 4  # of those, how many go into the GIF grid
    batch_size: int = 16
    sample_steps: int = 0  # 0 = the model's noise.sample_steps
    seed: int = 0

    def validate(self) -> None:
        self.check(self.clips >= 1, "clips", "at least one held-out clip")
        self.check(0 <= self.gif_clips <= self.clips, "gif_clips", f"between 0 and clips={self.clips}")
        self.check(self.batch_size >= 1, "batch_size", "a positive batch size")
        self.check(self.sample_steps >= 0, "sample_steps", "0 (model default) or a positive number of steps")


def _data_small_fdm() -> DataConfig:
    # 4 future frames 3 control steps apart: 0.15 s ahead in all at Meta-World's 80 Hz control
    cfg = data_small()
    cfg.future_frames, cfg.future_stride = 4, 3
    return cfg


@dataclass
class PretrainFDMConfig(Config):
    model: ForwardDynamicsConfig = field(default_factory=model_small)
    data: DataConfig = field(default_factory=_data_small_fdm)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: ForwardEvalConfig = field(default_factory=ForwardEvalConfig)
    run_dir: Path = Path("runs/pretrain-fdm/small")

    def validate(self) -> None:
        for key in ("future_frames", "image_size"):
            data_value = getattr(self.data, key)
            model_key = "num_frames" if key == "future_frames" else key
            model_value = getattr(self.model, model_key)
            if data_value != model_value:
                raise ConfigError(f"data.{key}={data_value}: expected model.{model_key}={model_value} (the clips must "
                                  "have the frames the model predicts)")


def preset_tiny() -> PretrainFDMConfig:
    data = data_tiny()
    data.future_frames, data.image_size = model_tiny().num_frames, model_tiny().image_size
    return PretrainFDMConfig(
        model=model_tiny(),
        data=data,
        trainer=TrainerConfig(max_steps=4, batch_size=2, warmup_steps=0, ema_decay=0.0, checkpoint_every=4,
                              log_every=2, eval_every=2, progress=False, mixed_precision="no"),
        eval=ForwardEvalConfig(clips=2, gif_clips=2, batch_size=2, sample_steps=2),
        run_dir=Path("runs/pretrain-fdm/tiny"),
    )


def preset_small() -> PretrainFDMConfig:
    # short CPU runs: no EMA (a 0.999 EMA without warm-up would still sit near the initial weights after the
    # few hundred steps such a run makes); fp32 because bf16 autocast is not faster for these small convs on CPU
    return PretrainFDMConfig(
        model=model_small(),
        data=_data_small_fdm(),
        trainer=TrainerConfig(max_steps=800, batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.0,
                              checkpoint_every=100, log_every=10, eval_every=200, mixed_precision="no"),
        eval=ForwardEvalConfig(clips=32, gif_clips=4, batch_size=16),
        run_dir=Path("runs/pretrain-fdm/small"),
    )


def preset_paper() -> PretrainFDMConfig:
    # appendix A.2, Table 10: batch 32, lr 1e-4, weight decay 1e-2, AdamW
    return PretrainFDMConfig(
        model=model_paper(),
        data=data_paper(),
        trainer=TrainerConfig(max_steps=100_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=500,
                              ema_decay=0.9999, checkpoint_every=2000, eval_every=2000),
        eval=ForwardEvalConfig(clips=64, gif_clips=4, batch_size=8, sample_steps=20),
        run_dir=Path("runs/pretrain-fdm/paper"),
    )


PRESETS = {"tiny": preset_tiny, "small": preset_small, "paper": preset_paper}


# ------------------------------------------------------------------------------------------------ evaluation
def evenly_spaced(n_items: int, count: int) -> list[int]:
    if n_items <= 0:
        raise ValueError("the held-out dataset is empty")
    count = min(count, n_items)
    return sorted({int(i) for i in np.linspace(0, n_items - 1, count).round()})


@torch.no_grad()
def evaluate_predictions(
    model: ForwardDynamicsModel,
    dataset: Dataset,
    indices: list[int],
    batch_size: int = 16,
    sample_steps: int | None = None,
    seed: int = 0,
    keep: int = 0,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Predict the futures of `dataset[indices]` and score them in decoded pixels ([0, 1] range, valid frames only).

    Three predictors: "model" (the multi-step sampler), "one_step" (the decoded single-step estimate the policy's
    features come from) and "copy" (the current frame repeated). MSE is averaged over all valid future pixels;
    PSNR = 10 log10(1 / MSE) of that mean. Returns (metrics, kept): the first `keep` clips' "images", "real",
    "model", "one_step" (uint8) for a GIF.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    num_frames = model.config.num_frames
    names = ("model", "one_step", "copy")
    sums = {name: torch.zeros(num_frames, dtype=torch.float64) for name in names}
    counts = torch.zeros(num_frames, dtype=torch.float64)
    kept: dict[str, list[torch.Tensor]] = {"images": [], "real": [], "model": [], "one_step": []}
    for start in range(0, len(indices), batch_size):
        batch = default_collate([dataset[i] for i in indices[start : start + batch_size]])
        images = batch["images"].to(device)  # [b v 3 h w] uint8
        real = batch["future_images"].to(device)  # [b v f 3 h w] uint8
        mask = batch["future_mask"].to(device).to(torch.float64)  # [b f]
        instructions = list(batch["instruction"])
        preds = {
            "model": to_uint8(model.sample(images, instructions, num_steps=sample_steps, generator=generator)),
            "one_step": to_uint8(model.predict_one_step(images, instructions)),
            "copy": images.unsqueeze(2).expand_as(real),
        }
        real_f = real.double() / 255
        pixels_per_frame = real[0, :, 0].numel()  # v * 3 * h * w
        for name, pred in preds.items():
            per_frame = ((pred.double() / 255 - real_f) ** 2).sum(dim=(1, 3, 4, 5))  # [b f]
            sums[name] += (per_frame * mask).sum(0).cpu()
        counts += mask.sum(0).cpu() * pixels_per_frame
        if len(kept["images"]) * batch_size < keep:
            kept["images"].append(images.cpu())
            kept["real"].append(real.cpu())
            kept["model"].append(preds["model"].cpu())
            kept["one_step"].append(preds["one_step"].cpu())
    metrics: dict[str, Any] = {"eval_clips": len(indices), "sample_steps": sample_steps or model.config.noise.sample_steps}
    for name in names:
        mse = float(sums[name].sum() / counts.sum().clamp(min=1))
        metrics[f"{name}_mse"] = mse
        metrics[f"{name}_psnr"] = 10 * math.log10(1.0 / max(mse, 1e-12))
        metrics[f"{name}_mse_by_frame"] = (sums[name] / counts.clamp(min=1)).tolist()
    metrics["mse_ratio_model_over_copy"] = metrics["model_mse"] / max(metrics["copy_mse"], 1e-12)
    metrics["mse_ratio_one_step_over_copy"] = metrics["one_step_mse"] / max(metrics["copy_mse"], 1e-12)
    out = {k: torch.cat(v)[:keep] for k, v in kept.items()} if keep else {}
    return metrics, out


def write_prediction_gif(path: str | Path, images: torch.Tensor, real: torch.Tensor, *predictions: torch.Tensor,
                         fps: float = 4) -> Path:
    """A GIF grid: one row per clip; per view the columns real | each prediction; frame 0 shows o_t everywhere.

    images uint8 [b v 3 h w]; real and each prediction uint8 [b v f 3 h w].
    """
    import imageio.v3 as iio
    from einops import rearrange

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = images.unsqueeze(2)
    columns = torch.stack([torch.cat([current, video], dim=2) for video in (real, *predictions)], dim=2)
    columns = torch.nn.functional.pad(columns, (1, 1, 1, 1), value=255)  # white borders between tiles
    grid = rearrange(columns, "b v p t c h w -> t (b h) (v p w) c").numpy()
    iio.imwrite(path, grid, duration=1000 / fps, loop=0)
    return path


def make_eval_fn(run_dir: Path, eval_dataset: Dataset, cfg: ForwardEvalConfig):
    indices = evenly_spaced(len(eval_dataset), cfg.clips)
    last: dict[str, Any] = {}

    def eval_fn(model: ForwardDynamicsModel, step: int) -> dict[str, float]:
        metrics, kept = evaluate_predictions(
            model, eval_dataset, indices, cfg.batch_size, cfg.sample_steps or None, cfg.seed, keep=cfg.gif_clips
        )
        if kept:
            write_prediction_gif(run_dir / "gifs" / f"step_{step:07d}.gif", kept["images"], kept["real"],
                                 kept["model"], kept["one_step"])
        last.clear()
        last.update(metrics, step=step)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    eval_fn.last = last  # type: ignore[attr-defined]
    return eval_fn


# ------------------------------------------------------------------------------------------------ the stage
def run_pretrain_fdm(
    cfg: PretrainFDMConfig, train_dataset: Dataset, eval_dataset: Dataset, resume: bool = False
) -> dict[str, Any]:
    """Train the GFDM, save `run_dir/model`, write `run_dir/metrics.json`; returns the metrics dict."""
    run_dir = Path(cfg.run_dir)
    if len(eval_dataset) == 0:
        raise ConfigError("data.val_fraction: the held-out split has no clips; expected a fraction that leaves at "
                          "least one episode (and a source with at least two episodes)")
    model = build_forward_model(cfg.model)
    eval_fn = make_eval_fn(run_dir, eval_dataset, cfg.eval)
    trainer = Trainer(cfg.trainer, run_dir, model, train_dataset, eval_fn=eval_fn, stage_config=cfg)
    result = trainer.fit(resume=resume)
    trained = trainer.unwrapped_model
    trained.save_pretrained(run_dir / "model")
    metrics = {
        "held_out": dict(eval_fn.last),
        "train": {k: v for k, v in result.items() if not k.startswith("eval/")},
        "train_clips": len(train_dataset),
        "held_out_clips_total": len(eval_dataset),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def pretrain_fdm_main(argv: list[str]) -> int:
    """`defi pretrain-fdm [--preset P] [--config F.json] [--resume] [--model.* --data.* --trainer.* --eval.* ...]`."""
    from defi.data.config import build_clip_dataset

    argv = list(argv)
    resume = "--resume" in argv
    argv = [a for a in argv if a != "--resume"]
    cfg = parse_cli(PretrainFDMConfig, argv, PRESETS, prog="defi pretrain-fdm",
                    description="Pretrain the General Forward Dynamics Model (video diffusion) on clip stores. "
                                "Pass --resume to continue the run in --run-dir from its latest checkpoint.")
    train = build_clip_dataset(cfg.data, "train")
    held_out = build_clip_dataset(cfg.data, "val")
    metrics = run_pretrain_fdm(cfg, train, held_out, resume=resume)
    held = metrics["held_out"]
    print(f"held-out future-frame MSE (decoded pixels, [0,1]): model {held['model_mse']:.5f} "
          f"({held['model_psnr']:.2f} dB), one-step {held['one_step_mse']:.5f}, copy-current-frame "
          f"{held['copy_mse']:.5f} ({held['copy_psnr']:.2f} dB); written to {cfg.run_dir / 'metrics.json'}")
    return 0
