"""Stage `defi finetune`: finetune a policy on a few action-labeled demonstrations (paper §3.3, Table 9).

- `policy_type=defi` with `--fdm RUN --idm RUN`: the paper's policy (pretrained GFDM frozen, GIDM + adapter train);
- `policy_type=defi` without `--fdm` / `--idm`, or with `--pretrained-weights False`: the same architecture from
  random weights (no pretraining);
- `policy_type=image_dp`: a plain image-conditioned diffusion policy of similar size.

The data follow from the policy (its cameras, image size, action chunk). Actions (and the proprio state) are
normalised with the dataset's statistics, saved inside the policy. The frozen parts a policy names
(`cacheable_inputs`) run once per clip before training (the shared feature cache). After training the policy is
saved to `run_dir/model` (`defi.policies.load_policy`) and, unless `--evaluate False`, evaluated in closed loop on
Meta-World (`run_dir/eval/metrics.json`, videos; `metrics.json` "closed_loop"). This module never asks which
class a policy is: it uses the policy protocol of `defi.policies.base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from defi.config import preset, replace
from defi.data import DataConfig, build_clip_dataset
from defi.errors import DefiError
from defi.eval.metaworld import EvalConfig
from defi.policies import policy_class
from defi.policies.defi import DeFIConfig
from defi.policies.image_dp import ImageDPConfig
from defi.train.feature_cache import CachedDataset, build_feature_cache
from defi.train.stage import StageConfig, StageRunner, parameter_counts, stage_metrics
from defi.train.trainer import TrainerConfig


@dataclass
class FinetuneConfig(StageConfig):
    run_dir: Path = Path("runs/finetune")
    policy_type: Literal["defi", "image_dp"] = "defi"
    fdm: str = ""
    """A `defi pretrain-fdm` run directory (its model/ is used); "" = an untrained GFDM (no pretraining)."""
    idm: str = ""
    """A `defi pretrain-idm` run directory; "" = an untrained GIDM (no pretraining)."""
    pretrained_weights: bool = True
    """False: take the GFDM/GIDM architectures (and encoders) from --fdm/--idm but start from random weights, the
    no-pretraining baseline of the same size."""
    random_gfdm: bool = False
    """Only the GFDM starts from random weights (paper Table 4's "GFDM w/o pre" row)."""
    random_gidm: bool = False
    """Only the GIDM starts from random weights (paper Table 4's "GIDM w/o pre" row)."""
    data: DataConfig = field(default_factory=lambda: replace(DataConfig.preset("small"),
                                                             sources=[("data/metaworld-demos", 1.0)]))
    """Labeled demonstrations. Cameras, image size and action chunk are taken from the policy."""
    defi: DeFIConfig = field(default_factory=lambda: DeFIConfig.preset("small"))
    image_dp: ImageDPConfig = field(default_factory=lambda: ImageDPConfig.preset("small"))
    eval: EvalConfig = field(default_factory=EvalConfig)
    evaluate: bool = True
    val_batches: int = 4
    """Held-out batches on which the sampled action chunks are scored (MSE vs the demonstrations)."""
    cache_frozen: bool = True
    """Run the frozen parts the policy names (DeFI: the frame encoder; the GFDM's one-step features unless the
    GFDM trains) once per training clip before training and keep their outputs in memory."""
    cache_max_gib: float = 6.0
    """Refuse (with the estimate) to build a feature cache larger than this."""

    def validate(self) -> None:
        self.check(self.val_batches >= 0, "val_batches", ">= 0")
        self.check(self.cache_max_gib > 0, "cache_max_gib", "> 0")

    @property
    def policy(self) -> Any:
        """The config of the policy type being finetuned."""
        return getattr(self, self.policy_type)

    @property
    def label(self) -> str:
        """"defi", "defi-scratch" (no pretrained weights) or the policy type."""
        pretrained = bool(self.fdm or self.idm) and self.pretrained_weights
        return self.policy_type if self.policy_type != "defi" or pretrained else "defi-scratch"


def build_policy(cfg: FinetuneConfig) -> tuple[nn.Module, DataConfig]:
    """The policy to finetune and the data config that follows from it."""
    policy = policy_class(cfg.policy_type).from_pretrained_runs(
        cfg.policy, fdm=cfg.fdm, idm=cfg.idm, pretrained_weights=cfg.pretrained_weights,
        random_gfdm=cfg.random_gfdm, random_gidm=cfg.random_gidm)
    return policy, replace(cfg.data, **policy.config.data_fields(), future_frames=1)


@torch.no_grad()
def val_action_mse(policy: nn.Module, dataset: Dataset | None, batches: int, batch_size: int) -> dict[str, float]:
    """Sampled action chunks vs the demonstrations on held-out clips (unnormalised units, valid steps only)."""
    from accelerate.utils import send_to_device

    from defi.data.clips import evenly_spaced

    if batches == 0 or dataset is None or len(dataset) == 0:
        return {}
    indices = evenly_spaced(len(dataset), batches * batch_size)
    device = policy.device
    gen = torch.Generator(device=device).manual_seed(0)
    errs, count = 0.0, 0.0
    for batch in DataLoader(Subset(dataset, indices), batch_size=batch_size):
        batch = send_to_device(batch, device)
        pred = policy.predict_action_chunk(batch, generator=gen)
        mask = batch["action_mask"].float().unsqueeze(-1)
        errs += float((((pred - batch["actions"]) ** 2) * mask).sum())
        count += float(mask.sum()) * pred.shape[-1]
    return {"val_action_mse": errs / max(count, 1.0)}


def run(cfg: FinetuneConfig, datasets: dict[str, Dataset] | None = None) -> dict[str, Any]:
    """Finetune (the stage contract of `defi.train.stage`): "train" and "val" clip datasets of labeled demos."""
    import time

    runner = StageRunner("finetune", cfg)
    torch.manual_seed(cfg.trainer.seed)  # the policy's initial weights
    policy, data_cfg = build_policy(cfg)
    given = dict(datasets or {})
    train = given["train"] if "train" in given else build_clip_dataset(data_cfg, "train")
    val = given.get("val")
    if "val" not in given and data_cfg.val_fraction > 0:
        try:
            val = build_clip_dataset(data_cfg, "val")
        except DefiError:
            val = None  # too few episodes to hold any out
    if train.action_stats is None:
        raise DefiError(f"data.sources {[p for p, _ in data_cfg.sources]}: no source has actions; finetuning needs "
                        "action-labeled demonstrations (generate them without --action-free)")
    policy.normalizer.set_stats({"action": train.action_stats, "observation.state": train.state_stats})
    policy.to(runner.device)
    if cfg.cache_frozen and policy.cacheable_inputs():
        start = time.perf_counter()
        cache = build_feature_cache(policy.frozen_features, train, batch_size=64, max_gib=cfg.cache_max_gib,
                                    device=runner.device, progress=cfg.trainer.progress)
        print(f"cached {', '.join(cache.features)} for {len(train)} clips: {cache.nbytes() / 2**20:.1f} MiB in "
              f"{time.perf_counter() - start:.1f} s")
        train = CachedDataset(cache, train)
    elif cfg.cache_frozen and getattr(policy.config, "random_shift", 0):
        print(f"no feature cache: random_shift={policy.config.random_shift} augments the images, so the frozen parts "
              "run every step")

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        return val_action_mse(model, val, cfg.val_batches, min(cfg.trainer.batch_size, 32))

    final, result = runner.train(policy, train, eval_fn)
    metrics = stage_metrics("finetune", cfg, result, {k.removeprefix("eval/"): v for k, v in result.items()
                                                      if k.startswith("eval/")},
                            len(train), len(val) if val is not None else 0, parameter_counts(final),
                            policy_type=cfg.policy_type, label=cfg.label, pretrained_fdm=cfg.fdm,
                            pretrained_idm=cfg.idm, pretrained_weights=cfg.pretrained_weights)
    model_dir = runner.save(final)
    if cfg.evaluate and runner.is_main:
        from defi.eval.metaworld import evaluate

        final.eval()
        report = evaluate(final, cfg.eval, Path(cfg.run_dir) / "eval", policy_dir=model_dir, label=cfg.label)
        metrics["closed_loop"] = {k: report[k] for k in ("overall", "per_task", "policy_ms_per_call", "vision_check")
                                  if k in report}
    return runner.finish(metrics)


@preset(FinetuneConfig, "tiny")
def _tiny() -> FinetuneConfig:
    return FinetuneConfig(
        run_dir=Path("runs/finetune-tiny"), data=DataConfig.preset("tiny"), defi=DeFIConfig.preset("tiny"),
        image_dp=ImageDPConfig.preset("tiny"),
        trainer=TrainerConfig(max_steps=10, batch_size=4, warmup_steps=2, lr=1e-3, ema_decay=0.0, checkpoint_every=5,
                              log_every=5, mixed_precision="no", progress=False),
        eval=EvalConfig(tasks=("reach-v3",), episodes_per_task=1, max_episode_steps=20, image_size=32,
                        video_episodes=1),
        val_batches=1,
    )


@preset(FinetuneConfig, "small")
def _small() -> FinetuneConfig:
    return FinetuneConfig(
        trainer=TrainerConfig(max_steps=3000, batch_size=32, lr=3e-4, warmup_steps=100, ema_decay=0.995,
                              checkpoint_every=500, log_every=25, eval_every=1000),
    )


@preset(FinetuneConfig, "paper")
def _paper() -> FinetuneConfig:
    return FinetuneConfig(
        data=DataConfig.preset("paper"), defi=DeFIConfig.preset("paper"), image_dp=ImageDPConfig.preset("paper"),
        trainer=TrainerConfig(max_steps=100_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=1000,
                              checkpoint_every=5000, eval_every=10_000),
    )


@preset(FinetuneConfig, "calvin-paper")
def _calvin_paper() -> FinetuneConfig:
    # CALVIN ABC->D (defi.data.sources.calvin): the training split's annotated windows; the paper's policy sees the
    # static and gripper views (GIDM: static), acts in 7-d relative actions and reads no proprio state
    # (state_dim=0). The in-loop evaluation is Meta-World's, so it is off: evaluate with `defi eval-calvin`.
    from defi.data.config import data_calvin_paper

    base = FinetuneConfig.preset("paper")
    views = {"cameras": ("static", "gripper"), "state_dim": 0, "action_dim": 7}
    defi = replace(base.defi, **views, inverse=replace(base.defi.inverse, camera="static"))
    return replace(base, run_dir=Path("runs/finetune/calvin"), data=data_calvin_paper(), defi=defi,
                   image_dp=replace(base.image_dp, **views), evaluate=False)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures `defi finetune` prints."""
    out = {"train_loss": metrics["train"].get("loss"), "val_action_mse": metrics["held_out"].get("val_action_mse")}
    if "closed_loop" in metrics:
        out["pc_success"] = metrics["closed_loop"]["overall"]["pc_success"]
    return out
