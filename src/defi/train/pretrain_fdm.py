"""Stage `defi pretrain-fdm`: pretrain the General Forward Dynamics Model on clips (paper §3.1, eq. 3).

Trains with the shared `Trainer` on any map-style clip dataset (the defi.data contract: "images" uint8
[V,3,h,w], "future_images" uint8 [V,F,3,h,w], "future_mask" bool [F], "instruction" str). Every
`trainer.eval_every` steps (and at the end) it samples futures for a fixed set of held-out clips with the
multi-step sampler and with one denoising step, writes `gifs/step_NNNNNNN.gif` (per clip and view:
real | sampled | one-step, frame 0 = o_t), and logs decoded-pixel MSE / PSNR of both and of the
copy-the-current-frame baseline. The run ends with `model/` (from_pretrained-loadable) and `metrics.json`
(the stage contract of `defi.train.stage`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from defi.config import Config, preset, replace
from defi.data import DataConfig
from defi.data.clips import evenly_spaced
from defi.errors import ConfigError
from defi.models.forward import ForwardDynamicsConfig, ForwardDynamicsModel, build_forward_model, to_uint8
from defi.models.forward.pipeline import predict_one_step, sample_future
from defi.train.stage import Datasets, StageConfig, StageRunner, parameter_counts, stage_datasets, stage_metrics
from defi.train.trainer import TrainerConfig


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
    return replace(DataConfig.preset("small"), future_frames=4, future_stride=3)


@dataclass
class PretrainFDMConfig(StageConfig):
    run_dir: Path = Path("runs/pretrain-fdm/small")
    model: ForwardDynamicsConfig = field(default_factory=lambda: ForwardDynamicsConfig.preset("small"))
    data: DataConfig = field(default_factory=_data_small_fdm)
    eval: ForwardEvalConfig = field(default_factory=ForwardEvalConfig)

    def validate(self) -> None:
        for key in ("future_frames", "image_size"):
            data_value = getattr(self.data, key)
            model_key = "num_frames" if key == "future_frames" else key
            model_value = getattr(self.model, model_key)
            if data_value != model_value:
                raise ConfigError(f"data.{key}={data_value}: expected model.{model_key}={model_value} (the clips must "
                                  "have the frames the model predicts)")


@preset(PretrainFDMConfig, "tiny")
def _tiny() -> PretrainFDMConfig:
    model = ForwardDynamicsConfig.preset("tiny")
    return PretrainFDMConfig(
        model=model,
        data=replace(DataConfig.preset("tiny"), future_frames=model.num_frames, image_size=model.image_size),
        trainer=TrainerConfig(max_steps=4, batch_size=2, warmup_steps=0, ema_decay=0.0, checkpoint_every=4,
                              log_every=2, eval_every=2, progress=False, mixed_precision="no"),
        eval=ForwardEvalConfig(clips=2, gif_clips=2, batch_size=2, sample_steps=2),
        run_dir=Path("runs/pretrain-fdm/tiny"),
    )


@preset(PretrainFDMConfig, "small")
def _small() -> PretrainFDMConfig:
    # short CPU runs: no EMA (a 0.999 EMA without warm-up would still sit near the initial weights after the
    # few hundred steps such a run makes); fp32 because bf16 autocast is not faster for these small convs on CPU
    return PretrainFDMConfig(
        trainer=TrainerConfig(max_steps=800, batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.0,
                              checkpoint_every=100, log_every=10, eval_every=200, mixed_precision="no"),
        eval=ForwardEvalConfig(clips=32, gif_clips=4, batch_size=16),
    )


@preset(PretrainFDMConfig, "paper")
def _paper() -> PretrainFDMConfig:
    # appendix A.2, Table 10: batch 32, lr 1e-4, weight decay 1e-2, AdamW
    return PretrainFDMConfig(
        model=ForwardDynamicsConfig.preset("paper"),
        data=DataConfig.preset("paper"),
        trainer=TrainerConfig(max_steps=100_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=500,
                              ema_decay=0.9999, checkpoint_every=2000, eval_every=2000),
        eval=ForwardEvalConfig(clips=64, gif_clips=4, batch_size=8, sample_steps=20),
        run_dir=Path("runs/pretrain-fdm/paper"),
    )


@preset(PretrainFDMConfig, "calvin-paper")
def _calvin_paper() -> PretrainFDMConfig:
    # CALVIN ABC->D (defi.data.sources.calvin): the training split's play stream and annotated windows, static +
    # gripper views at the paper GFDM's 256 px and 16 frames; another split root: --data.sources PATH 1.0 ...
    from defi.data.config import data_calvin_pretrain_paper

    base = PretrainFDMConfig.preset("paper")
    data = replace(data_calvin_pretrain_paper(), future_frames=base.model.num_frames,
                   image_size=base.model.image_size)
    return replace(base, data=data, run_dir=Path("runs/pretrain-fdm/calvin"))


# ------------------------------------------------------------------------------------------------ evaluation
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
    PSNR = 10 log10(1 / MSE) of that mean. The `moving_*` ratios repeat the comparison on the half of the clips in
    which the scene changes most (copy error above the median): where the arm visibly moves, so that still
    clips, on which copying is already right, do not flatter a model that predicts no motion. Returns (metrics,
    kept): the first `keep` clips' "images", "real", "model", "one_step" (uint8) for a GIF.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    num_frames = model.config.num_frames
    names = ("model", "one_step", "copy")
    sums = {name: torch.zeros(num_frames, dtype=torch.float64) for name in names}
    counts = torch.zeros(num_frames, dtype=torch.float64)
    per_clip: dict[str, list[torch.Tensor]] = {name: [] for name in names}  # summed squared error per clip
    kept: dict[str, list[torch.Tensor]] = {"images": [], "real": [], "model": [], "one_step": []}
    for start in range(0, len(indices), batch_size):
        batch = default_collate([dataset[i] for i in indices[start : start + batch_size]])
        images = batch["images"].to(device)  # [b v 3 h w] uint8
        real = batch["future_images"].to(device)  # [b v f 3 h w] uint8
        mask = batch["future_mask"].to(device).to(torch.float64)  # [b f]
        instructions = list(batch["instruction"])
        preds = {
            "model": to_uint8(sample_future(model, images, instructions, num_steps=sample_steps, generator=generator)),
            "one_step": to_uint8(predict_one_step(model, images, instructions)),
            "copy": images.unsqueeze(2).expand_as(real),
        }
        real_f = real.double() / 255
        pixels_per_frame = real[0, :, 0].numel()  # v * 3 * h * w
        for name, pred in preds.items():
            per_frame = ((pred.double() / 255 - real_f) ** 2).sum(dim=(1, 3, 4, 5))  # [b f]
            sums[name] += (per_frame * mask).sum(0).cpu()
            per_clip[name].append((per_frame * mask).sum(1).cpu())
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
    clip_err = {name: torch.cat(v) for name, v in per_clip.items()}
    moving = clip_err["copy"] >= clip_err["copy"].median()
    for name in ("model", "one_step"):
        metrics[f"moving_mse_ratio_{name}_over_copy"] = float(clip_err[name][moving].sum()
                                                             / clip_err["copy"][moving].sum().clamp(min=1e-12))
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


def make_eval_fn(run_dir: Path | None, eval_dataset: Dataset, cfg: ForwardEvalConfig):
    """The stage's evaluation; GIFs are written into run_dir/gifs (none when run_dir is None: other ranks)."""
    indices = evenly_spaced(len(eval_dataset), cfg.clips)
    last: dict[str, Any] = {}

    def eval_fn(model: ForwardDynamicsModel, step: int) -> dict[str, float]:
        metrics, kept = evaluate_predictions(
            model, eval_dataset, indices, cfg.batch_size, cfg.sample_steps or None, cfg.seed, keep=cfg.gif_clips
        )
        if kept and run_dir is not None:
            write_prediction_gif(run_dir / "gifs" / f"step_{step:07d}.gif", kept["images"], kept["real"],
                                 kept["model"], kept["one_step"])
        last.clear()
        last.update(metrics, step=step)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    eval_fn.last = last  # type: ignore[attr-defined]
    return eval_fn


# ------------------------------------------------------------------------------------------------ the stage
def run(cfg: PretrainFDMConfig, datasets: Datasets | None = None) -> dict[str, Any]:
    """Train the GFDM (the stage contract of `defi.train.stage`): "train" and "val" (held out) clip datasets."""
    data = stage_datasets(cfg, datasets)
    if len(data["val"]) == 0:
        raise ConfigError("data.val_fraction: the held-out split has no clips; expected a fraction that leaves at "
                          "least one episode (and a source with at least two episodes)")
    runner = StageRunner("pretrain-fdm", cfg)
    model = build_forward_model(cfg.model, runner.device)
    eval_fn = make_eval_fn(runner.run_dir if runner.is_main else None, data["val"], cfg.eval)
    trained, result = runner.train(model, data["train"], eval_fn)
    metrics = stage_metrics("pretrain-fdm", cfg, result, eval_fn.last, len(data["train"]), len(data["val"]),
                            parameter_counts(trained))
    runner.save(trained)
    return runner.finish(metrics)


def summary(metrics: dict[str, Any]) -> str:
    """The line `defi pretrain-fdm` prints."""
    held = metrics["held_out"]
    return (f"held-out future-frame MSE (decoded pixels, [0,1]): model {held['model_mse']:.5f} "
            f"({held['model_psnr']:.2f} dB), one-step {held['one_step_mse']:.5f}, copy-current-frame "
            f"{held['copy_mse']:.5f} ({held['copy_psnr']:.2f} dB)")
