"""Stage `defi pretrain-idm`: pretrain the General Inverse Dynamics Model on (action-free) clips (Algorithm 1).

Reads clips (`images` = o_t, `goal_images` = o_{t+n}, `instruction`) from the data layer, encodes both frames
with the frozen frame encoder and the instruction with the frozen text encoder, and trains the GIDM with the
shared trainer. Actions are never used for training; the held-out evaluation uses them only for the linear probe.

Because both encoders are frozen, the frame features of every clip are computed once before training and kept
in memory (`cache_features`, on by default): an epoch then costs no image decoding or encoder passes.

Run directory: config.json, checkpoints/, metrics.jsonl, model/ (GIDM.from_pretrained), metrics.json,
attention/step_*.png (action-query attention over patches, paper Fig. 12).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from defi.config import Config, parse_cli, replace
from defi.errors import ConfigError, DefiError
from defi.models.encoders.frame import FrameEncoder, FrameEncoderConfig, build_frame_encoder
from defi.models.encoders.text import TextEncoder, TextEncoderConfig, build_text_encoder
from defi.models.inverse import GIDM, GIDMConfig, code_usage, gidm_paper, gidm_small, gidm_tiny
from defi.models.inverse.attention_png import save_attention_png
from defi.models.inverse.probe import ridge_probe
from defi.train.trainer import TrainerConfig, Trainer

from defi.data import DATA_PRESETS, DataConfig, build_clip_dataset


@dataclass
class IDMEvalConfig(Config):
    max_clips: int = 2048  # held-out clips scored (evenly spaced over the split)
    batch_size: int = 64
    probe_test_fraction: float = 0.25  # when probe_split == eval_split: share of its episodes the probe is scored on
    probe_action_steps: int = 0  # the probe target is the mean of the first K valid actions (0 = all of the chunk)
    attention_examples: int = 6  # rows in the attention PNG (0 = none)

    def validate(self) -> None:
        self.check(self.max_clips >= 2, "max_clips", "at least 2 clips")
        self.check(self.batch_size >= 1, "batch_size", "at least 1")
        self.check(0 < self.probe_test_fraction < 1, "probe_test_fraction", "a fraction in (0, 1)")
        self.check(self.probe_action_steps >= 0, "probe_action_steps", ">= 0 (0 = all steps)")
        self.check(self.attention_examples >= 0, "attention_examples", ">= 0")


@dataclass
class PretrainIDMConfig(Config):
    run_dir: Path = Path("runs/pretrain-idm")
    data: DataConfig = field(default_factory=DataConfig)
    train_split: str = "train"
    eval_split: str = "val"
    probe_split: str = "train"
    """A split with actions on which the linear probe is fitted (it is scored on eval_split's clips)."""
    view_index: int = 0
    """Which camera view of the clip (index into data.cameras) the GIDM sees."""
    frame_encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: GIDMConfig = field(default_factory=GIDMConfig)
    """feature_dim, num_patches and text_dim are filled from the encoders at run time."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: IDMEvalConfig = field(default_factory=IDMEvalConfig)
    cache_features: bool = True
    """Encode every clip's frames once before training (the encoders are frozen)."""
    cache_max_gib: float = 8.0
    resume: bool = False
    """Continue the run in run_dir from its latest checkpoint."""

    def validate(self) -> None:
        self.check(self.view_index >= 0, "view_index", "a camera view index >= 0")
        self.check(self.cache_max_gib > 0, "cache_max_gib", "a positive size in GiB")


# ------------------------------------------------------------------------------------------ frozen features
class CachedClipDataset(Dataset):
    """Frozen features of a clip dataset: items {"current_features", "future_features" fp16 [P, D], ...}."""

    def __init__(self, current: torch.Tensor, future: torch.Tensor, instructions: list[str],
                 actions: torch.Tensor | None = None, action_mask: torch.Tensor | None = None,
                 has_actions: torch.Tensor | None = None, episode_index: torch.Tensor | None = None):
        self.current, self.future, self.instructions = current, future, instructions
        self.actions, self.action_mask, self.has_actions, self.episode_index = actions, action_mask, has_actions, episode_index

    def __len__(self) -> int:
        return self.current.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"current_features": self.current[i], "future_features": self.future[i], "instruction": self.instructions[i]}


def _check_clip(item: dict[str, Any], view_index: int) -> None:
    for key in ("images", "goal_images", "instruction"):
        if key not in item:
            raise DefiError(f"clip dataset item has no {key!r} (keys: {sorted(item)}); expected the clip contract")
    views = item["images"].shape[0]
    if view_index >= views:
        raise ConfigError(f"config key view_index={view_index}: expected < {views} (the clips have {views} views)")


@torch.no_grad()
def encode_clips(
    dataset: Dataset, frame_encoder: FrameEncoder, view_index: int, indices: Sequence[int] | None = None,
    batch_size: int = 64, num_workers: int = 0, desc: str = "encoding frames",
) -> CachedClipDataset:
    """Encode o_t and o_{t+n} of every clip once (the encoders are frozen)."""
    from tqdm.auto import tqdm

    indices = list(range(len(dataset))) if indices is None else list(indices)
    if not indices:
        raise DefiError("clip dataset is empty: nothing to encode")
    _check_clip(dataset[indices[0]], view_index)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    cur, fut, instr, acts, amask, has, ep = [], [], [], [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False):
        images, goals = batch["images"][:, view_index], batch["goal_images"][:, view_index]
        cur.append(frame_encoder(images).half().cpu())
        fut.append(frame_encoder(goals).half().cpu())
        instr += list(batch["instruction"])
        if "actions" in batch:
            acts.append(batch["actions"].float())
            amask.append(batch["action_mask"].bool())
            has.append(batch["has_actions"].bool())
            ep.append(batch["episode_index"].long())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return CachedClipDataset(cat(cur), cat(fut), instr, cat(acts), cat(amask), cat(has), cat(ep))


def _evenly_spaced(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return torch.linspace(0, n - 1, k).round().long().unique().tolist()


# --------------------------------------------------------------------------------------------- the module
class GIDMPretrainModule(nn.Module):
    """The trainer's model: frozen encoders (kept out of the state dict) + the trainable GIDM.

    `forward(batch)` takes cached features ("current_features"/"future_features") or raw clips
    ("images"/"goal_images", one view picked by `view_index`) plus "instruction" strings.
    """

    def __init__(self, gidm: GIDM, frame_encoder: FrameEncoder, text_encoder: TextEncoder | None, view_index: int = 0):
        super().__init__()
        self.gidm = gidm
        # plain attributes, not submodules: frozen, never checkpointed, moved lazily to the batch's device
        self.__dict__["frame_encoder"] = frame_encoder
        self.__dict__["text_encoder"] = text_encoder
        self.view_index = view_index

    def frame_features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "current_features" in batch:
            return batch["current_features"].float(), batch["future_features"].float()
        images, goals = batch["images"][:, self.view_index], batch["goal_images"][:, self.view_index]
        enc = self.frame_encoder.to(images.device)
        return enc(images), enc(goals)

    def text_tokens(self, instructions: Sequence[str], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.text_encoder is None:
            return None, None
        emb = self.text_encoder.encode(list(instructions))
        # the tokenizers pad on the right: drop the columns that are padding in every row of the batch
        length = max(1, int(emb.mask.sum(1).max()))
        return emb.tokens[:, :length].to(device), emb.mask[:, :length].to(device)

    def inputs(self, batch: dict[str, Any]):
        current, future = self.frame_features(batch)
        tokens, mask = self.text_tokens(batch["instruction"], current.device)
        return current, future, tokens, mask

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.gidm(*self.inputs(batch))


# ----------------------------------------------------------------------------------------------- evaluation
def _probe_target(actions: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean of the first `steps` valid actions of each chunk (all of them when steps == 0): [M, A]."""
    if steps:
        actions, mask = actions[:, :steps], mask[:, :steps]
    w = mask.unsqueeze(-1).float()
    return (actions * w).sum(1) / w.sum(1).clamp(min=1)


def _labeled(ds: CachedClipDataset, steps: int) -> tuple[CachedClipDataset, torch.Tensor, torch.Tensor] | None:
    """Clips with actions, sorted by episode: (clips, probe targets [M, A], episode ids [M])."""
    if ds.actions is None:
        return None
    idx = (ds.has_actions & ds.action_mask.any(1)).nonzero().squeeze(1)
    if len(idx) < 4:
        return None
    order = idx[torch.argsort(ds.episode_index[idx], stable=True)]
    sub = CachedClipDataset(ds.current[order], ds.future[order], [ds.instructions[i] for i in order.tolist()])
    return sub, _probe_target(ds.actions[order], ds.action_mask[order], steps), ds.episode_index[order]


def _probes(run, eval_set: CachedClipDataset, probe_set: CachedClipDataset, cfg: IDMEvalConfig) -> dict[str, float]:
    """Ridge probes latent action -> true action and pooled (e_{t+n} - e_t) -> true action, R^2 on held-out clips.

    Fitted on the probe split and scored on the eval split's labeled clips; when both are the same split, its
    episodes are divided instead (the last `probe_test_fraction` of them are scored).
    """
    test_part = _labeled(eval_set, cfg.probe_action_steps)
    if test_part is None:
        return {}
    if probe_set is eval_set:
        sub, y, episodes = test_part
        uniq = episodes.unique(sorted=True)
        n_test = max(1, int(round(cfg.probe_test_fraction * len(uniq))))
        if len(uniq) > n_test:
            test = torch.isin(episodes, uniq[-n_test:])
        else:  # a single episode: split its clips in time instead
            test = torch.arange(len(y)) >= int(len(y) * (1 - cfg.probe_test_fraction))
        _, latent_x, diff_x, _ = run(sub)
        fit_rows, test_rows = ~test, test
        xs = {"latent_action": (latent_x[fit_rows], latent_x[test_rows]), "feature_diff": (diff_x[fit_rows], diff_x[test_rows])}
        y_fit, y_test = y[fit_rows], y[test_rows]
    else:
        fit_part = _labeled(probe_set, cfg.probe_action_steps)
        if fit_part is None:
            return {}
        (fit_sub, y_fit, _), (test_sub, y_test, _) = fit_part, test_part
        _, lf, df, _ = run(fit_sub)
        _, lt, dt, _ = run(test_sub)
        xs = {"latent_action": (lf, lt), "feature_diff": (df, dt)}
    out: dict[str, float] = {}
    for name, (x_fit, x_test) in xs.items():
        res = ridge_probe(x_fit, y_fit, x_test, y_test)
        out[f"probe_r2_{name}"] = res["r2"]
        out[f"probe_train_r2_{name}"] = res["train_r2"]
    out["probe_fit_clips"], out["probe_test_clips"] = float(len(y_fit)), float(len(y_test))
    return out


@torch.no_grad()
def evaluate_gidm(
    module: GIDMPretrainModule, eval_set: CachedClipDataset, probe_set: CachedClipDataset | None,
    cfg: IDMEvalConfig, attention: dict[str, torch.Tensor] | None = None, attention_path: Path | None = None,
    grid: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Held-out prediction MSE vs copy-e_t, codebook usage, and the linear probes; optionally the attention PNG."""
    gidm = module.gidm
    device = next(gidm.parameters()).device
    was_training = gidm.training
    gidm.eval()

    def run(ds: CachedClipDataset):
        sums = {"mse": 0.0, "copy_mse": 0.0}
        feats, codes, diffs = [], [], []
        for start in range(0, len(ds), cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            batch = {"current_features": ds.current[sl].to(device), "future_features": ds.future[sl].to(device),
                     "instruction": ds.instructions[sl]}
            current, future, tokens, mask = module.inputs(batch)
            pred, latent = gidm.predict(current, future, tokens, mask)
            n = current.shape[0]
            sums["mse"] += float((pred.float() - future).pow(2).mean()) * n
            sums["copy_mse"] += float((current - future).pow(2).mean()) * n
            feats.append(latent.features.float().flatten(1).cpu())
            diffs.append((future - current).mean(1).cpu())
            if latent.codes is not None:
                codes.append(latent.codes.cpu())
        return {k: v / len(ds) for k, v in sums.items()}, torch.cat(feats), torch.cat(diffs), codes

    sums, _, _, codes = run(eval_set)
    out: dict[str, float] = {"mse": sums["mse"], "copy_mse": sums["copy_mse"],
                             "mse_over_copy": sums["mse"] / max(sums["copy_mse"], 1e-12)}
    q = gidm.config.quantizer
    if codes and q.kind == "vq":
        out["codes_used_fraction"], out["code_perplexity"] = code_usage(torch.cat(codes), q.codebook_size)
        out["codebook_size"] = float(q.codebook_size)
    elif codes and q.kind == "binning":
        out["bins_used_fraction"], out["bin_perplexity"] = code_usage(torch.cat(codes), q.num_bins)

    if probe_set is not None:
        out.update(_probes(run, eval_set, probe_set, cfg))

    if attention and attention_path is not None and gidm.config.architecture != "mlp" and grid is not None:
        rows = attention["positions"].tolist()
        batch = {"current_features": eval_set.current[rows].to(device),
                 "future_features": eval_set.future[rows].to(device),
                 "instruction": [eval_set.instructions[i] for i in rows]}
        weights = gidm.query_attention(*module.inputs(batch))
        save_attention_png(attention_path, attention["images"], attention["goal_images"], weights.cpu(), grid,
                           batch["instruction"])
    gidm.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- the stage
def _load_split(cfg: PretrainIDMConfig, split: str) -> Dataset:
    return build_clip_dataset(cfg.data, split)


def pretrain_idm(
    cfg: PretrainIDMConfig,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    probe_dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Run the stage; datasets default to the data layer's splits. Returns the metrics written to metrics.json."""
    run_dir = Path(cfg.run_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    frame_encoder = build_frame_encoder(cfg.frame_encoder, device)
    text_encoder = build_text_encoder(cfg.text_encoder, device) if cfg.model.text_dim else None
    model_cfg = replace(
        cfg.model, feature_dim=frame_encoder.dim, num_patches=frame_encoder.num_patches,
        text_dim=text_encoder.dim if text_encoder is not None else 0,
    )
    cfg = replace(cfg, model=model_cfg)
    train_dataset = train_dataset if train_dataset is not None else _load_split(cfg, cfg.train_split)
    eval_dataset = eval_dataset if eval_dataset is not None else _load_split(cfg, cfg.eval_split)
    if probe_dataset is None:
        known = {cfg.eval_split: eval_dataset, cfg.train_split: train_dataset}
        probe_dataset = known[cfg.probe_split] if cfg.probe_split in known else _load_split(cfg, cfg.probe_split)
    workers = cfg.trainer.num_workers

    if cfg.cache_features:
        gib = 2 * len(train_dataset) * frame_encoder.num_patches * frame_encoder.dim * 2 / 2**30
        if gib > cfg.cache_max_gib:
            raise ConfigError(
                f"config key cache_features=True: the train split's features need {gib:.1f} GiB, over "
                f"cache_max_gib={cfg.cache_max_gib}; raise cache_max_gib or pass --no-cache-features")
        train_set: Dataset = encode_clips(train_dataset, frame_encoder, cfg.view_index, num_workers=workers,
                                          batch_size=cfg.eval.batch_size, desc="encoding train clips")
    else:
        _check_clip(train_dataset[0], cfg.view_index)
        train_set = train_dataset
    eval_idx = _evenly_spaced(len(eval_dataset), cfg.eval.max_clips)
    eval_set = encode_clips(eval_dataset, frame_encoder, cfg.view_index, eval_idx, cfg.eval.batch_size, workers,
                            desc="encoding eval clips")
    # attention maps for a few clips spread over the held-out split (different episodes and tasks)
    positions = _evenly_spaced(len(eval_idx), cfg.eval.attention_examples) if cfg.eval.attention_examples else []
    items = [eval_dataset[eval_idx[i]] for i in positions]
    shown = {"positions": torch.tensor(positions, dtype=torch.long),
             "images": torch.stack([it["images"][cfg.view_index] for it in items]) if items else None,
             "goal_images": torch.stack([it["goal_images"][cfg.view_index] for it in items]) if items else None}
    shown = shown if items else None
    if probe_dataset is eval_dataset:
        probe_set = eval_set
    else:
        probe_idx = _evenly_spaced(len(probe_dataset), cfg.eval.max_clips)
        probe_set = encode_clips(probe_dataset, frame_encoder, cfg.view_index, probe_idx, cfg.eval.batch_size,
                                 workers, desc="encoding probe clips")

    gidm = GIDM(model_cfg)
    module = GIDMPretrainModule(gidm, frame_encoder, text_encoder, cfg.view_index)

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        return evaluate_gidm(model, eval_set, probe_set, cfg.eval, shown,
                             run_dir / "attention" / f"step_{step:07d}.png", frame_encoder.grid)

    trainer = Trainer(config=cfg.trainer, run_dir=run_dir, model=module, train_dataset=train_set,
                      eval_fn=eval_fn, stage_config=cfg)
    result = trainer.fit(resume=cfg.resume)
    final = trainer.unwrapped_model
    final.gidm.save_pretrained(run_dir / "model")
    metrics = {
        **{k: v for k, v in result.items() if isinstance(v, (int, float, str))},
        "parameters": sum(p.numel() for p in final.gidm.parameters()),
        "train_clips": len(train_set),
        "eval_clips": len(eval_set),
        "frame_encoder": cfg.frame_encoder.kind,
        "text_encoder": cfg.text_encoder.kind,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------------------------- presets
def _data_preset(name: str) -> DataConfig:
    return DATA_PRESETS[name]()


def preset_tiny() -> PretrainIDMConfig:
    return PretrainIDMConfig(
        run_dir=Path("runs/pretrain-idm-tiny"), data=_data_preset("tiny"),
        frame_encoder=FrameEncoderConfig(kind="patch", image_size=32, patch_size=8, dim=16),
        text_encoder=TextEncoderConfig(kind="minilm", max_length=16),
        model=gidm_tiny(),
        trainer=TrainerConfig(max_steps=20, batch_size=8, warmup_steps=2, lr=1e-3, ema_decay=0.0,
                              checkpoint_every=1000, log_every=5, progress=False),
        eval=IDMEvalConfig(max_clips=64, batch_size=32, attention_examples=2),
    )


def preset_small() -> PretrainIDMConfig:
    # sized for a shared 2-core CPU: 4 x 4 patch tokens of 64 x 64 frames, a 128-wide 3-layer GIDM
    # the GIDM reads o_t and o_{t+n} only: no future clip frames; an action chunk as long as the ~1 s interval
    # (80 steps at Meta-World's 80 fps) so that the probe's target is the mean action over o_t -> o_{t+n}
    data = replace(_data_preset("small"), cameras=("corner",), future_frames=1, action_horizon=80)
    return PretrainIDMConfig(
        data=data,
        frame_encoder=FrameEncoderConfig(kind="patch", image_size=64, patch_size=16, dim=256),
        text_encoder=TextEncoderConfig(kind="minilm", max_length=16),
        model=gidm_small(),
        trainer=TrainerConfig(max_steps=1000, batch_size=32, lr=5e-4, warmup_steps=50, ema_decay=0.0,
                              checkpoint_every=500, log_every=25, eval_every=500),
    )


def preset_paper() -> PretrainIDMConfig:
    # DINOv2 ViT-B/14 at 224 px and T5-base (paper §3.2); AdamW lr 1e-4, wd 1e-2, batch 32 per GPU (Table 10)
    return PretrainIDMConfig(
        data=_data_preset("paper"),
        frame_encoder=FrameEncoderConfig(kind="dinov2", image_size=224),
        text_encoder=TextEncoderConfig(kind="t5"),
        model=gidm_paper(),
        trainer=TrainerConfig(max_steps=200_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=2000,
                              checkpoint_every=5000, eval_every=10_000),
    )


PRESETS = {"tiny": preset_tiny, "small": preset_small, "paper": preset_paper}


def pretrain_idm_main(argv: list[str]) -> int:
    cfg = parse_cli(PretrainIDMConfig, argv, PRESETS, prog="defi pretrain-idm",
                    description="Pretrain the General Inverse Dynamics Model (latent actions, VQ codebook).")
    metrics = pretrain_idm(cfg)
    keys = ("eval/mse", "eval/copy_mse", "eval/codes_used_fraction", "eval/code_perplexity",
            "eval/probe_r2_latent_action", "eval/probe_r2_feature_diff")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"wrote {Path(cfg.run_dir) / 'metrics.json'} and {Path(cfg.run_dir) / 'model'}")
    return 0
