"""One contract for every training stage (`pretrain-fdm`, `pretrain-idm`, `finetune`).

Each stage module exposes

    Config (a `StageConfig`: run_dir, resume, data, trainer, plus its own fields; presets tiny/small/paper)
    run(cfg, datasets=None) -> metrics

`datasets` maps split names ("train", "val", and for pretrain-idm optionally "probe") to map-style clip
datasets; missing ones are built from `cfg.data`. `run` trains with the shared `Trainer`, saves the model to
`run_dir/model` (`StageRunner.save`) and writes `run_dir/metrics.json` (`StageRunner.finish`), always in the same
shape (`stage_metrics`):

    {"stage", "run_dir", "steps",
     "train":     last logged training figures (loss, lr, samples_per_s, ...), train_time_s, mixed_precision,
     "held_out":  the stage's held-out figures (its eval_fn's last result),
     "data":      {"train_clips", "held_out_clips"},
     "parameters": {"total", "trainable"},
     "environment": versions and machine,
     ...stage-specific keys (e.g. finetune's "closed_loop")}

Several processes (DDP under accelerate/torchrun): the devices come from the stage's `Accelerator`, which is made
before anything is built; every rank trains, only the main process writes `model/` and `metrics.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from defi.config import Config
from defi.data import DataConfig, build_clip_dataset
from defi.errors import DefiError
from defi.train.trainer import Trainer, TrainerConfig, make_accelerator

Datasets = Mapping[str, Dataset]


@dataclass
class StageConfig(Config):
    run_dir: Path = Path("runs/stage")
    resume: bool = False
    """Continue the run in run_dir from its latest checkpoint (after a crash or a kill)."""
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def stage_datasets(cfg: StageConfig, datasets: Datasets | None, splits: tuple[str, ...] = ("train", "val"),
                   data: DataConfig | None = None) -> dict[str, Dataset]:
    """The given datasets, completed with the splits of `data` (default `cfg.data`) that were not given."""
    out = dict(datasets or {})
    for split in splits:
        if split not in out:
            out[split] = build_clip_dataset(data or cfg.data, split)
    return out


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def stage_metrics(stage: str, cfg: StageConfig, result: Mapping[str, Any], held_out: Mapping[str, Any],
                  train_clips: int, held_out_clips: int, parameters: Mapping[str, int],
                  **extra: Any) -> dict[str, Any]:
    from defi.utils.environment import environment_info

    train = {k: v for k, v in result.items() if not k.startswith("eval/")}
    return {"stage": stage, "run_dir": str(cfg.run_dir), "steps": int(train.get("step", cfg.trainer.max_steps)),
            "train": train, "held_out": dict(held_out),
            "data": {"train_clips": int(train_clips), "held_out_clips": int(held_out_clips)},
            "parameters": dict(parameters), "environment": environment_info(), **extra}


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / "metrics.json"
    tmp = path.with_name(f"metrics.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


class StageRunner:
    """What every stage does around its own model and data: the accelerator first, then training, then the main
    process saves the model and writes metrics.json."""

    def __init__(self, name: str, cfg: StageConfig):
        if not isinstance(cfg, StageConfig):
            raise DefiError(f"stage {name}: expected a StageConfig, got {type(cfg).__name__}")
        self.name, self.cfg = name, cfg
        self.run_dir = Path(cfg.run_dir)
        self.accelerator = make_accelerator(cfg.trainer)
        self.device = self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def train(self, model: nn.Module, train_set: Dataset,
              eval_fn: Callable[[nn.Module, int], dict[str, Any]] | None) -> tuple[nn.Module, dict[str, Any]]:
        """Fit `model` (resuming when cfg.resume) and return (the unwrapped final model, the trainer's result)."""
        trainer = Trainer(self.cfg.trainer, self.run_dir, model, train_set, eval_fn=eval_fn, stage_config=self.cfg,
                          accelerator=self.accelerator)
        result = trainer.fit(resume=self.cfg.resume)
        return trainer.unwrapped_model, result

    def save(self, model: Any) -> Path:
        """Main process: save the final model to run_dir/model; every rank waits for it."""
        if self.is_main:
            model.save_pretrained(self.run_dir / "model")
        self.accelerator.wait_for_everyone()
        return self.run_dir / "model"

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Main process: write metrics.json; every rank waits for it."""
        if self.is_main:
            write_metrics(self.run_dir, metrics)
        self.accelerator.wait_for_everyone()
        return metrics
