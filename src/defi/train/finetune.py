"""Stage `defi finetune`: couple the pretrained GFDM and GIDM into a DeFI policy and finetune it on a few
action-labeled demonstrations (paper §3.3, Table 9), or train a baseline with the same trainer:

- `policy_type=defi` with `--fdm RUN --idm RUN`: the paper's policy (pretrained GFDM frozen, GIDM + adapter train);
- `policy_type=defi` without `--fdm` / `--idm`: the same architecture from random weights (no pretraining);
- `policy_type=image_dp`: a plain image-conditioned diffusion policy of similar size.

Actions (and the proprio state) are normalised with the store's statistics, saved inside the policy. After
training the policy is saved to `run_dir/model` (load it with `defi.policies.load_policy`) and, unless
`--evaluate False`, evaluated in closed loop on Meta-World (`run_dir/eval/metrics.json`, videos).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from defi.config import Config, load_config, parse_cli, replace
from defi.data import DataConfig, build_clip_dataset
from defi.data.config import data_small, data_tiny
from defi.errors import DefiError
from defi.eval.metaworld_eval import EvalConfig
from defi.models.baselines.image_policy import image_policy_small, image_policy_tiny
from defi.models.baselines.policy import ImageDPPolicy, ImageDPPolicyConfig
from defi.models.policy import DeFIPolicy, DeFIPolicyConfig, video_former_for, policy_small, policy_tiny
from defi.train.trainer import Trainer, TrainerConfig


@dataclass
class FinetuneConfig(Config):
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
    data: DataConfig = field(default_factory=data_small)
    """Labeled demonstrations. Cameras, image size and action horizon are taken from the policy."""
    policy: DeFIPolicyConfig = field(default_factory=policy_small)
    baseline: ImageDPPolicyConfig = field(default_factory=ImageDPPolicyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    evaluate: bool = True
    val_batches: int = 4
    """Held-out batches on which the sampled action chunks are scored (MSE vs the demonstrations)."""
    resume: bool = False
    cache_frozen: bool = True
    """DeFI only: run the frozen parts (the frame encoder; the GFDM's one-step features unless the GFDM trains)
    once per training clip before training and keep their outputs in memory, instead of every step."""
    cache_max_gib: float = 6.0
    """Refuse (with the estimate) to build a feature cache larger than this."""

    def validate(self) -> None:
        self.check(self.val_batches >= 0, "val_batches", ">= 0")
        self.check(self.cache_max_gib > 0, "cache_max_gib", "> 0")


def _pretrained_policy_config(cfg: FinetuneConfig) -> tuple[DeFIPolicyConfig, Any, Any]:
    """The policy config with the pretrained runs' architectures (GFDM, GIDM, frame and text encoders) in place."""
    from defi.models.forward.model import ForwardDynamicsModel
    from defi.models.inverse import GIDM

    pcfg = cfg.policy
    gfdm = gidm = None
    if cfg.fdm:
        gfdm = ForwardDynamicsModel.from_pretrained(_model_dir(cfg.fdm, "fdm"))
        pcfg = replace(pcfg, forward=gfdm.config)
    if cfg.idm:
        from defi.train.pretrain_idm import PretrainIDMConfig

        run = Path(cfg.idm)
        idm_cfg = load_config(PretrainIDMConfig, run / "config.json")
        gidm = GIDM.from_pretrained(_model_dir(cfg.idm, "idm"))
        camera = idm_cfg.data.cameras[idm_cfg.view_index]
        if camera not in pcfg.cameras:
            raise DefiError(f"--idm {run}: the GIDM was pretrained on camera {camera!r}, which the policy does not "
                            f"use (policy.cameras={list(pcfg.cameras)})")
        pcfg = replace(pcfg, inverse=gidm.config, frame_encoder=idm_cfg.frame_encoder,
                       inverse_text=idm_cfg.text_encoder, gidm_view=pcfg.cameras.index(camera))
    # the Video Former reads the (possibly pretrained) GFDM's feature layers at their real widths
    vf = video_former_for(pcfg.forward)
    pcfg = replace(pcfg, video_former=replace(pcfg.video_former, layers=vf.layers, in_channels=vf.in_channels,
                                              num_frames=vf.num_frames))
    if not cfg.pretrained_weights or cfg.random_gfdm:
        gfdm = None
    if not cfg.pretrained_weights or cfg.random_gidm:
        gidm = None
    return pcfg, gfdm, gidm


def _model_dir(run: str, what: str) -> Path:
    path = Path(run)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    raise DefiError(f"--{what} {path}: expected a pretrain-{what} run directory holding model/ (config.json and "
                    "model.safetensors)")


def build_policy(cfg: FinetuneConfig) -> tuple[nn.Module, DataConfig]:
    if cfg.policy_type == "image_dp":
        m = cfg.baseline.model
        data = replace(cfg.data, cameras=cfg.baseline.cameras, image_size=m.image_size,
                       action_horizon=m.adapter.action_horizon, action_dim=m.adapter.action_dim, future_frames=1)
        return ImageDPPolicy(cfg.baseline), data
    pcfg, gfdm, gidm = _pretrained_policy_config(cfg)
    policy = DeFIPolicy.from_pretrained_parts(pcfg, gfdm, gidm)
    data = replace(cfg.data, cameras=pcfg.cameras, image_size=pcfg.image_size, action_horizon=pcfg.action_horizon,
                   action_dim=pcfg.action_dim, future_frames=1)
    return policy, data


def _val_action_mse(policy: nn.Module, dataset, batches: int, batch_size: int) -> dict[str, float]:
    """Sampled action chunks vs the demonstrations on held-out clips (unnormalised units, valid steps only)."""
    if batches == 0 or dataset is None or len(dataset) == 0:
        return {}
    from torch.utils.data import DataLoader

    step = max(1, len(dataset) // (batches * batch_size))
    indices = list(range(0, len(dataset), step))[: batches * batch_size]
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size)
    device = next(policy.parameters()).device
    errs, count = 0.0, 0.0
    gen = torch.Generator(device=device).manual_seed(0)
    for batch in loader:
        images, state = batch["images"].to(device), batch["state"].to(device)
        if isinstance(policy, DeFIPolicy):
            pred = policy.predict_actions(images, batch["instruction"], state if policy.config.state_dim else None,
                                          generator=gen)
        else:
            emb = policy.instruction_embedding(batch["instruction"], device)
            pred = policy.model.sample(images, emb, state if policy.config.model.state_dim else None, generator=gen)
        mask = batch["action_mask"].to(device).float().unsqueeze(-1)
        errs += float((((pred - batch["actions"].to(device)) ** 2) * mask).sum())
        count += float(mask.sum()) * pred.shape[-1]
    return {"val_action_mse": errs / max(count, 1.0)}


def cache_frozen_features(policy: DeFIPolicy, train, cfg: FinetuneConfig):
    """The training set with the frozen parts' outputs precomputed per clip (see defi.train.feature_cache)."""
    import time

    from defi.train.feature_cache import CachedClipDataset, build_feature_cache, cache_nbytes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy.to(device)
    start = time.perf_counter()
    store = build_feature_cache(policy, train, batch_size=64, max_gib=cfg.cache_max_gib, device=device,
                                progress=cfg.trainer.progress)
    print(f"cached {', '.join(store)} for {len(train)} clips: {cache_nbytes(store) / 2**20:.1f} MiB in "
          f"{time.perf_counter() - start:.1f} s")
    return CachedClipDataset(train, store)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    from defi.utils.environment import environment_info

    torch.manual_seed(cfg.trainer.seed)
    policy, data_cfg = build_policy(cfg)
    train = build_clip_dataset(data_cfg, "train")
    try:
        val = build_clip_dataset(data_cfg, "val") if data_cfg.val_fraction > 0 else None
    except DefiError:
        val = None  # too few episodes to hold any out
    if train.action_stats is None:
        raise DefiError(f"data.sources {[p for p, _ in data_cfg.sources]}: no source has actions; finetuning needs "
                        "action-labeled demonstrations (generate them without --action-free)")
    policy.set_normalization(train.action_stats, train.state_stats)
    if isinstance(policy, DeFIPolicy) and cfg.cache_frozen:
        train = cache_frozen_features(policy, train, cfg)

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        return _val_action_mse(model, val, cfg.val_batches, min(cfg.trainer.batch_size, 32))

    trainer = Trainer(cfg.trainer, cfg.run_dir, policy, train, eval_fn=eval_fn, stage_config=cfg)
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrapped_model
    if trainer.accelerator.is_main_process:
        model.save_pretrained(Path(cfg.run_dir) / "model")
    metrics: dict[str, Any] = {"policy_type": cfg.policy_type, "pretrained_fdm": cfg.fdm, "pretrained_idm": cfg.idm,
                               "pretrained_weights": cfg.pretrained_weights,
                               "train": result, "parameters": _count(model), "environment": environment_info()}
    if cfg.evaluate and trainer.accelerator.is_main_process:
        from defi.eval.metaworld_eval import evaluate

        pretrained = (cfg.fdm or cfg.idm) and cfg.pretrained_weights
        label = cfg.policy_type if cfg.policy_type != "defi" else ("defi" if pretrained else "defi-scratch")
        model.eval()
        report = evaluate(model, cfg.eval, Path(cfg.run_dir) / "eval", policy_dir=Path(cfg.run_dir) / "model",
                          label=label)
        metrics["eval"] = {k: report[k] for k in ("overall", "per_task", "policy_ms_per_call")}
    if trainer.accelerator.is_main_process:
        tmp = Path(cfg.run_dir) / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        tmp.replace(Path(cfg.run_dir) / "metrics.json")
    return metrics


def _count(model: nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def preset_tiny() -> FinetuneConfig:
    return FinetuneConfig(
        run_dir=Path("runs/finetune-tiny"), data=data_tiny(), policy=policy_tiny(),
        baseline=ImageDPPolicyConfig(model=replace(image_policy_tiny(), num_views=1, instruction_dim=384, state_dim=4,
                                                   adapter=replace(image_policy_tiny().adapter, action_horizon=4))),
        trainer=TrainerConfig(max_steps=10, batch_size=4, warmup_steps=2, lr=1e-3, ema_decay=0.0, checkpoint_every=5,
                              log_every=5, mixed_precision="no", progress=False),
        eval=EvalConfig(tasks=("reach-v3",), episodes_per_task=1, max_episode_steps=20, image_size=32,
                        video_episodes=1),
        val_batches=1,
    )


def preset_small() -> FinetuneConfig:
    return FinetuneConfig(
        data=replace(data_small(), sources=[("data/metaworld-demos", 1.0)]),
        baseline=ImageDPPolicyConfig(model=replace(image_policy_small(), num_views=1, state_dim=4)),
        trainer=TrainerConfig(max_steps=3000, batch_size=32, lr=3e-4, warmup_steps=100, ema_decay=0.995,
                              checkpoint_every=500, log_every=25, eval_every=1000),
    )


def preset_paper() -> FinetuneConfig:
    from defi.data.config import data_paper
    from defi.models.baselines.image_policy import image_policy_paper
    from defi.models.policy import policy_paper

    return FinetuneConfig(
        data=data_paper(), policy=policy_paper(),
        baseline=ImageDPPolicyConfig(cameras=("static", "gripper"), model=image_policy_paper()),
        trainer=TrainerConfig(max_steps=100_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=1000,
                              checkpoint_every=5000, eval_every=10_000),
    )


PRESETS = {"tiny": preset_tiny, "small": preset_small, "paper": preset_paper}


def finetune_main(argv: list[str]) -> int:
    cfg = parse_cli(FinetuneConfig, argv, PRESETS, prog="defi finetune",
                    description="Finetune the coupled DeFI policy (or a baseline) on labeled demonstrations.")
    metrics = finetune(cfg)
    summary = {"train_loss": metrics["train"].get("loss"), "val_action_mse": metrics["train"].get("eval/val_action_mse")}
    if "eval" in metrics:
        summary["pc_success"] = metrics["eval"]["overall"]["pc_success"]
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(cfg.run_dir) / 'model'} and {Path(cfg.run_dir) / 'metrics.json'}")
    return 0

