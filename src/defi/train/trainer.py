"""The one training loop every stage uses, on Hugging Face accelerate.

The same code runs on a laptop CPU, one GPU, or many GPUs/nodes under `accelerate launch` / `torchrun` (DDP).
A stage hands the trainer a model whose `forward(batch)` returns a dict with a scalar "loss", a map-style
dataset, and optionally an evaluation function; the trainer owns everything else:

- device choice (CUDA when present, else CPU), bf16 autocast where the device has native bf16,
- AdamW (no weight decay on biases and norms) with linear warmup and cosine decay, gradient accumulation and
  clipping, EMA weights (diffusers' `EMAModel`),
- a deterministic, resumable sampler that shards indices across ranks (and honours `dataset.sample_weights`),
- checkpoints every N steps written atomically (accelerate's `save_state` into a temporary directory, then a
  rename): safetensors weights, optimizer, scheduler, EMA, RNG states of every rank, and the step,
- `resume=True` continues from the latest checkpoint and ends where an uninterrupted run would,
- a progress bar with loss and samples/s, metrics in `metrics.jsonl`, optional TensorBoard,
- a NaN/inf loss stops the run with a clear message; the last good checkpoint is kept.

Run directory layout::

    run_dir/config.json              resolved stage config (when given)
    run_dir/metrics.jsonl            one JSON object per logged step / evaluation
    run_dir/checkpoints/step_0000500/  model.safetensors, optimizer.bin, scheduler/EMA/sampler state,
                                       random_states_<rank>.pkl, trainer_state.json
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from defi.config import Config, save_config
from defi.errors import CheckpointError, DefiError, TrainingDiverged
from defi.utils.environment import cpu_supports_bf16

CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainerConfig(Config):
    max_steps: int = 1000
    batch_size: int = 32  # per process and micro-step; effective batch = batch_size * grad_accum_steps * processes
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.999  # 0 disables EMA
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    tensorboard: bool = False
    progress: bool = True

    def validate(self) -> None:
        self.check(self.max_steps >= 1, "max_steps", "at least 1")
        self.check(self.batch_size >= 1, "batch_size", "at least 1")
        self.check(self.grad_accum_steps >= 1, "grad_accum_steps", "at least 1")
        self.check(self.lr > 0 and math.isfinite(self.lr), "lr", "a positive learning rate")
        self.check(self.weight_decay >= 0, "weight_decay", ">= 0")
        self.check(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        self.check(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        self.check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        self.check(self.grad_clip >= 0, "grad_clip", ">= 0 (0 disables clipping)")
        self.check(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 disables EMA)")
        self.check(self.num_workers >= 0, "num_workers", ">= 0")
        self.check(self.checkpoint_every >= 1, "checkpoint_every", "at least 1")
        self.check(self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1")
        self.check(self.log_every >= 1, "log_every", "at least 1")
        self.check(self.eval_every >= 0, "eval_every", ">= 0")


def resolve_mixed_precision(requested: str) -> str:
    """'auto' picks bf16 on GPUs that support it and on CPUs with native bf16 instructions, else full fp32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "no"


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless stream of index batches, deterministic in (seed, position), sharded across ranks.

    The stream concatenates one shuffled pass (or weighted draw) of the dataset per epoch; global batch b covers
    stream positions [b * G, (b + 1) * G) with G = batch_size * world_size, and rank r takes its slice. Resuming
    at batch b therefore reproduces exactly the batches an uninterrupted run would see, whatever the number of
    DataLoader workers.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, weights: torch.Tensor | None = None):
        if num_items < 1:
            raise DefiError("the training dataset is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and (self.weights.numel() != num_items or (self.weights < 0).any()
                                         or self.weights.sum() <= 0):
            raise DefiError(f"dataset.sample_weights must hold {num_items} non-negative weights with a positive sum")
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.weights is None:
                order = torch.randperm(self.num_items, generator=g)
            else:
                order = torch.multinomial(self.weights, self.num_items, replacement=True, generator=g)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def batch_at(self, batch: int) -> list[int]:
        global_size = self.batch_size * self.world_size
        start = batch * global_size + self.rank * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.num_items)
            out.append(int(self._epoch_order(epoch)[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batch = self.start_batch
        while True:
            yield self.batch_at(batch)
            batch += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own bookkeeping
        return 2**62


class _TrainerState:
    """Step counter checkpointed alongside the model (accelerate's custom-object protocol)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state; a pipeline that runs several stages in one process (the demo,
    the tests) may change precision between stages, so drop the old state but keep the distributed set-up."""
    from accelerate.state import AcceleratorState, GradientState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


def make_accelerator(config: TrainerConfig):
    """The stage's `Accelerator` (CUDA when present, else CPU; the config's mixed precision). A stage creates it
    first, so that frozen encoders and caches are built on the device accelerate chose."""
    from accelerate import Accelerator

    mixed_precision = resolve_mixed_precision(config.mixed_precision)
    _allow_new_precision(mixed_precision)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
                       step_scheduler_with_optimizer=False)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary, half-written directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        run_dir: str | Path,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable | None = None,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        stage_config: Any | None = None,
        accelerator: Any | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.eval_fn = eval_fn
        self.collate_fn = collate_fn
        self.dataset = train_dataset
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.mixed_precision = str(self.accelerator.mixed_precision)
        self._check_run_dir()
        if stage_config is not None and self.accelerator.is_main_process:
            save_config(stage_config, self.run_dir / "config.json")

        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise DefiError("the model has no trainable parameters (all have requires_grad=False)")
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = None
        if config.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=config.ema_decay, use_ema_warmup=False)
        self.state = _TrainerState()
        # accelerate saves/restores these with the model and optimizer in every checkpoint
        self.accelerator.register_for_checkpointing(self.scheduler, self.state)
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)

    # ----------------------------------------------------------------------------------------------- set-up
    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _check_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise DefiError(f"run directory {self.run_dir} is not writable ({err.strerror}); "
                            "choose another with --run-dir") from None

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        step = self.state.step
        root = self.run_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
        tmp = root / f"tmp-{CHECKPOINT_PREFIX}{step:07d}"
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({
                "step": step, "mixed_precision": self.mixed_precision, "num_processes": acc.num_processes,
                "batch_size": self.config.batch_size, "grad_accum_steps": self.config.grad_accum_steps,
                "time": time.time(),
            }) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        state_file = path / "trainer_state.json"
        try:
            saved = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{state_file}: unreadable checkpoint state ({err})") from None
        if saved.get("num_processes") != self.accelerator.num_processes:
            raise CheckpointError(
                f"{path}: written by {saved.get('num_processes')} processes, resumed with "
                f"{self.accelerator.num_processes}; resume with the same number of processes")
        try:
            self.accelerator.load_state(str(path))
        except Exception as err:  # torch/safetensors raise many types for truncated or foreign files
            raise CheckpointError(f"{path}: checkpoint is corrupt or incomplete ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if self.state.step != saved["step"]:
            raise CheckpointError(f"{path}: step in trainer_state.json ({saved['step']}) does not match the "
                                  f"checkpointed step ({self.state.step})")

    # ------------------------------------------------------------------------------------------- metrics
    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop records written after the checkpoint so that the log reads like one run."""
        path = self.run_dir / "metrics.jsonl"
        if not self.accelerator.is_main_process or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        model = self.unwrapped_model
        if self.ema is not None:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        model.eval()
        try:
            with torch.no_grad():
                results = self.eval_fn(model, self.state.step) or {}
        finally:
            model.train()
            if self.ema is not None:
                self.ema.restore(self.trainable)
        self._log({"step": self.state.step, **{f"eval/{k}": v for k, v in results.items()}})
        return results

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        from accelerate.utils import send_to_device, set_seed

        cfg, acc = self.config, self.accelerator
        existing = list_checkpoints(self.run_dir)
        if resume:
            if not existing:
                raise CheckpointError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'} "
                                      "(expected step_NNNNNNN directories written by an earlier run)")
            self.load_checkpoint(existing[-1])
            self._truncate_metrics(self.state.step)
            acc.print(f"resumed from {existing[-1]} at step {self.state.step}")
        else:
            if existing:
                raise DefiError(f"{self.run_dir} already holds checkpoints (latest {existing[-1].name}); pass "
                                "--resume to continue that run, or choose another --run-dir")
            set_seed(cfg.seed + acc.process_index)
            if acc.is_main_process and (self.run_dir / "metrics.jsonl").exists():
                (self.run_dir / "metrics.jsonl").unlink()

        self._tb = None
        if cfg.tensorboard and acc.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DefiError("--trainer.tensorboard needs the tensorboard package: pip install 'defi[tensorboard]'") from None
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

        sampler = ResumableBatchSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes,
            start_batch=self.state.step * cfg.grad_accum_steps,
            weights=getattr(self.dataset, "sample_weights", None),
        )
        loader = DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0,
            # a private generator: creating the iterator must not consume the global RNG, or a resumed run
            # would drift from an uninterrupted one
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        batches = iter(loader)
        model = self.model
        model.train()
        samples_per_step = cfg.batch_size * cfg.grad_accum_steps * acc.num_processes
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        last: dict[str, Any] = {}
        fit_start = time.perf_counter()
        bar = None
        if cfg.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.state.step, desc=self.run_dir.name, dynamic_ncols=True)

        try:
            while self.state.step < cfg.max_steps:
                step_sums: dict[str, float] = {}
                for micro in range(cfg.grad_accum_steps):
                    batch = send_to_device(next(batches), acc.device, non_blocking=True)
                    sync = micro == cfg.grad_accum_steps - 1
                    ctx = acc.no_sync(model) if not sync else nullcontext()
                    with ctx:
                        out = model(batch)
                        loss = out["loss"]
                        self._check_finite(loss)
                        acc.backward(loss / cfg.grad_accum_steps)
                    for k, v in out.items():
                        if isinstance(v, torch.Tensor) and v.numel() == 1:
                            step_sums[k] = step_sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum_steps
                grad_norm = None
                if cfg.grad_clip > 0:
                    grad_norm = float(acc.clip_grad_norm_(self.trainable, cfg.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.step(self.trainable)
                self.state.step += 1

                for k, v in step_sums.items():
                    window[k] = window.get(k, 0.0) + v
                if grad_norm is not None:
                    window["grad_norm"] = window.get("grad_norm", 0.0) + grad_norm
                window_steps += 1
                step = self.state.step
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    means = self._reduce_mean({k: v / window_steps for k, v in window.items()})
                    elapsed = time.perf_counter() - window_start
                    record = {"step": step, **means, "lr": self.scheduler.get_last_lr()[0],
                              "samples_per_s": window_steps * samples_per_step / max(elapsed, 1e-9)}
                    self._log(record)
                    last = record
                    if bar is not None:
                        bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}",
                                        samples_s=f"{record['samples_per_s']:.1f}")
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    self.save_checkpoint()
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.max_steps:
                    self.evaluate()
        finally:
            if bar is not None:
                bar.close()
        final_eval = self.evaluate()
        if self.ema is not None:
            # from here on the model holds the EMA weights: what the stage saves and evaluates
            self.ema.copy_to(self.trainable)
        if self._tb is not None:
            self._tb.close()
        acc.wait_for_everyone()
        return {**last, **{f"eval/{k}": v for k, v in final_eval.items()},
                "train_time_s": time.perf_counter() - fit_start, "mixed_precision": self.mixed_precision}

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            good = list_checkpoints(self.run_dir)
            where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint had been written yet"
            self._log({"step": self.state.step, "event": "diverged", "loss": float(loss.detach())})
            raise TrainingDiverged(
                f"loss became {float(loss.detach())} at step {self.state.step + 1}; training stopped and {where}. "
                "Lower --trainer.lr, raise --trainer.warmup-steps or check the data for NaNs")

    def _reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], device=self.accelerator.device, dtype=torch.float64)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))

