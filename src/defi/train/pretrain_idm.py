"""Stage `defi pretrain-idm`: pretrain the General Inverse Dynamics Model on (action-free) clips (Algorithm 1).

Reads clips (`images` = o_t, `goal_images` = o_{t+n}, `instruction`) from the data layer, encodes both frames
with the frozen frame encoder and the instruction with the frozen text encoder, and trains the GIDM with the
shared trainer. Actions are never used for training; the held-out evaluation uses them only for the linear probe.

Because both encoders are frozen, the frame tokens of every clip are computed once before training and kept in
memory (the shared feature cache, `cache_features`, on by default): an epoch then costs no image decoding or
encoder passes. The GIDM's config records its encoders and camera, so the saved model rebuilds its own inputs.

Run directory: config.json, checkpoints/, metrics.jsonl, model/ (GIDM.from_pretrained), metrics.json,
attention/step_*.png (action-query attention over patches, paper Fig. 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from defi.config import Config, preset, replace
from defi.data import DataConfig, build_clip_dataset
from defi.data.clips import evenly_spaced
from defi.errors import ConfigError, DefiError
from defi.eval.probes import ridge_probe, save_attention_png
from defi.models.encoders import shared_encoder
from defi.models.inverse import GIDM, GIDMConfig, code_usage
from defi.models.layers import random_shift
from defi.train.feature_cache import CACHE_PREFIX, CachedDataset, FeatureCache, build_feature_cache
from defi.train.stage import Datasets, StageConfig, StageRunner, parameter_counts, stage_metrics
from defi.train.trainer import TrainerConfig


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
class PretrainIDMConfig(StageConfig):
    run_dir: Path = Path("runs/pretrain-idm")
    train_split: str = "train"
    eval_split: str = "val"
    probe_split: str = "train"
    """A split with actions on which the linear probe is fitted (it is scored on eval_split's clips)."""
    model: GIDMConfig = field(default_factory=lambda: GIDMConfig.preset("small"))
    """The GIDM, with the camera it sees and its frozen frame and text encoders; feature_dim, num_patches and
    text_dim are filled from the encoders at run time."""
    eval: IDMEvalConfig = field(default_factory=IDMEvalConfig)
    cache_features: bool = True
    """Encode every clip's frames once before training (the encoders are frozen)."""
    cache_max_gib: float = 8.0
    pair_shift: int = 0
    """Pixels (0: off). The encoder sees a clip's o_t and o_{t+n} shifted together by one random offset, the decoder
    starts from and predicts the same clip under another: a latent action that says where the arm ends up in the
    image no longer fits, one that says how it moves still does. The shifts change the frozen tokens, so the
    train clips are encoded every step (needs cache_features false)."""

    def validate(self) -> None:
        self.check(self.model.camera in self.data.cameras, "model",
                   f"a GIDM camera among data.cameras {list(self.data.cameras)} (got {self.model.camera!r})")
        self.check(self.cache_max_gib > 0, "cache_max_gib", "a positive size in GiB")
        self.check(self.pair_shift >= 0, "pair_shift", "an integer >= 0 (pixels)")
        self.check(not (self.pair_shift and self.cache_features), "pair_shift",
                   "0 while cache_features is true (shifted frames have other tokens than the cached ones: set "
                   "cache_features false to use pair_shift)")


def with_encoder_dims(model: GIDMConfig, device: Any = "cpu") -> GIDMConfig:
    """The GIDM config with the input sizes its frozen encoders give."""
    frame = shared_encoder(model.frame_encoder, device)
    text_dim = shared_encoder(model.text_encoder, device).dim if model.text_dim else 0
    return model.with_encoder_dims(frame.dim, frame.num_patches, text_dim)


# ------------------------------------------------------------------------------------------ frozen features
_KEEP = ("instruction", "actions", "action_mask", "has_actions", "episode_index")


def _check_clip(item: dict[str, Any], view: int) -> None:
    for key in ("images", "goal_images", "instruction"):
        if key not in item:
            raise DefiError(f"clip dataset item has no {key!r} (keys: {sorted(item)}); expected the clip contract")
    if view >= item["images"].shape[0]:
        raise ConfigError(f"config key model.camera: view {view} requested, the clips have {item['images'].shape[0]}")


def encode_clips(gidm: GIDM, dataset: Dataset, view: int, indices: Sequence[int] | None = None,
                 batch_size: int = 64, max_gib: float = 8.0, desc: str = "encoding frames",
                 progress: bool = True) -> FeatureCache:
    """The frozen frame tokens of o_t and o_{t+n} of every clip ("current_tokens", "future_tokens"), plus the clip
    fields the evaluation needs (instruction, actions, ...), computed once."""
    _check_clip(dataset[indices[0] if indices else 0], view)
    device = gidm.patch_pos.device

    def tokens(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"current_tokens": gidm.frame_tokens(batch["images"][:, view]),
                "future_tokens": gidm.frame_tokens(batch["goal_images"][:, view])}

    return build_feature_cache(tokens, dataset, batch_size=batch_size, max_gib=max_gib, device=device, keep=_KEEP,
                               indices=indices, desc=desc, progress=progress)


# --------------------------------------------------------------------------------------------- the module
class GIDMPretrainModule(nn.Module):
    """The trainer's model: the GIDM on a clip batch. Reads cached tokens ("cache.current_tokens" /
    "cache.future_tokens") or encodes the raw frames ("images" / "goal_images", the view of the GIDM's camera)."""

    def __init__(self, gidm: GIDM, view: int = 0, pair_shift: int = 0):
        super().__init__()
        self.gidm = gidm
        self.view = view
        self.pair_shift = pair_shift

    def inputs(self, batch: dict[str, Any]):
        if CACHE_PREFIX + "current_tokens" in batch:
            current = batch[CACHE_PREFIX + "current_tokens"].float()
            future = batch[CACHE_PREFIX + "future_tokens"].float()
        else:
            current = self.gidm.frame_tokens(batch["images"][:, self.view])
            future = self.gidm.frame_tokens(batch["goal_images"][:, self.view])
        tokens, mask = self.gidm.text_tokens(batch["instruction"])
        return current, future, tokens, mask

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not (self.pair_shift and self.training and "images" in batch):
            return self.gidm(*self.inputs(batch))
        # one offset per (clip, side) moves o_t and o_{t+n} together: stacked on channels, shifted once
        pair = torch.cat([batch["images"][:, self.view], batch["goal_images"][:, self.view]], 1).float()
        sides = torch.cat([random_shift(pair, self.pair_shift), random_shift(pair, self.pair_shift)])
        # the four frames of every clip through the frozen encoder in one call: [2B, 6, h, w] -> 4 x [B, P, D]
        frames = sides.to(batch["images"].dtype).reshape(-1, 3, *sides.shape[-2:])
        tokens_all = self.gidm.frame_tokens(frames).unflatten(0, (2, -1, 2))
        tokens, mask = self.gidm.text_tokens(batch["instruction"])
        return self.gidm(tokens_all[0, :, 0], tokens_all[0, :, 1], tokens, mask,
                         decode_pair=(tokens_all[1, :, 0], tokens_all[1, :, 1]))


# ----------------------------------------------------------------------------------------------- evaluation
def _probe_target(actions: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean of the first `steps` valid actions of each chunk (all of them when steps == 0): [M, A]."""
    if steps:
        actions, mask = actions[:, :steps], mask[:, :steps]
    w = mask.unsqueeze(-1).float()
    return (actions * w).sum(1) / w.sum(1).clamp(min=1)


def _labeled(cache: FeatureCache, steps: int) -> tuple[FeatureCache, torch.Tensor, torch.Tensor] | None:
    """Clips with actions, sorted by episode: (their cache rows, probe targets [M, A], episode ids [M])."""
    f = cache.fields
    if "actions" not in f:
        return None
    idx = (f["has_actions"] & f["action_mask"].any(1)).nonzero().squeeze(1)
    if len(idx) < 4:
        return None
    order = idx[torch.argsort(f["episode_index"][idx], stable=True)]
    rows = order.tolist()
    sub = FeatureCache({k: v[order] for k, v in cache.features.items()},
                       {"instruction": [f["instruction"][i] for i in rows]})
    return sub, _probe_target(f["actions"][order], f["action_mask"][order], steps), f["episode_index"][order]


def _probes(run, eval_set: FeatureCache, probe_set: FeatureCache, cfg: IDMEvalConfig) -> dict[str, float]:
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
        xs = {"latent_action": (latent_x[~test], latent_x[test]), "feature_diff": (diff_x[~test], diff_x[test])}
        y_fit, y_test = y[~test], y[test]
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
    module: GIDMPretrainModule, eval_set: FeatureCache, probe_set: FeatureCache | None, cfg: IDMEvalConfig,
    attention: dict[str, torch.Tensor] | None = None, attention_path: Path | None = None,
) -> dict[str, float]:
    """Held-out prediction MSE vs copy-e_t, codebook usage, and the linear probes; optionally the attention PNG."""
    from accelerate.utils import send_to_device

    gidm = module.gidm
    device = gidm.patch_pos.device
    was_training = gidm.training
    gidm.eval()

    def run(cache: FeatureCache):
        sums = {"mse": 0.0, "copy_mse": 0.0}
        feats, codes, diffs = [], [], []
        for start in range(0, len(cache), cfg.batch_size):
            batch = send_to_device(cache.batch(slice(start, start + cfg.batch_size)), device)
            current, future, tokens, mask = module.inputs(batch)
            pred, latent = gidm.predict(current, future, tokens, mask)
            n = current.shape[0]
            sums["mse"] += float((pred.float() - future).pow(2).mean()) * n
            sums["copy_mse"] += float((current - future).pow(2).mean()) * n
            feats.append(latent.features.float().flatten(1).cpu())
            diffs.append((future - current).mean(1).cpu())
            if latent.codes is not None:
                codes.append(latent.codes.cpu())
        return {k: v / len(cache) for k, v in sums.items()}, torch.cat(feats), torch.cat(diffs), codes

    sums, _, _, codes = run(eval_set)
    out: dict[str, float] = {"mse": sums["mse"], "copy_mse": sums["copy_mse"],
                             "mse_over_copy": sums["mse"] / max(sums["copy_mse"], 1e-12)}
    q = gidm.config.quantizer
    if codes and q.num_codes is not None:
        out["codes_used_fraction"], out["code_perplexity"] = code_usage(torch.cat(codes), q.num_codes)
        out["codebook_size"] = float(q.num_codes)
    elif codes and q.kind == "binning":
        out["bins_used_fraction"], out["bin_perplexity"] = code_usage(torch.cat(codes), q.num_bins)

    if probe_set is not None:
        out.update(_probes(run, eval_set, probe_set, cfg))

    if attention and attention_path is not None and gidm.config.architecture != "mlp":
        batch = send_to_device(eval_set.batch(attention["positions"].tolist()), device)
        weights = gidm.query_attention(*module.inputs(batch))
        side = int(round(gidm.config.num_patches ** 0.5))
        save_attention_png(attention_path, attention["images"], attention["goal_images"], weights.cpu(),
                           (side, side), batch["instruction"])
    gidm.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- the stage
def run(cfg: PretrainIDMConfig, datasets: Datasets | None = None) -> dict[str, Any]:
    """Pretrain the GIDM (the stage contract of `defi.train.stage`). `datasets` may hold "train", "val" (held out:
    prediction MSE, codebook, probe test clips) and "probe" (labeled clips the probe is fitted on); the missing
    ones come from `cfg.data`'s train_split / eval_split / probe_split."""
    runner = StageRunner("pretrain-idm", cfg)
    device = runner.device
    cfg = runner.cfg = replace(cfg, model=with_encoder_dims(cfg.model, device))
    view = cfg.data.cameras.index(cfg.model.camera)
    given = dict(datasets or {})

    def split(name: str, data_split: str) -> Dataset:
        return given[name] if name in given else build_clip_dataset(cfg.data, data_split)

    train_dataset, eval_dataset = split("train", cfg.train_split), split("val", cfg.eval_split)
    known = {cfg.train_split: train_dataset, cfg.eval_split: eval_dataset}
    probe_dataset = given["probe"] if "probe" in given else known[cfg.probe_split] if cfg.probe_split in known \
        else build_clip_dataset(cfg.data, cfg.probe_split)

    gidm = GIDM(cfg.model).to(device)
    if cfg.cache_features:
        train_set: Dataset = CachedDataset(encode_clips(gidm, train_dataset, view, batch_size=cfg.eval.batch_size,
                                                        max_gib=cfg.cache_max_gib, desc="encoding train clips",
                                                        progress=cfg.trainer.progress))
    else:
        _check_clip(train_dataset[0], view)
        train_set = train_dataset
    eval_idx = evenly_spaced(len(eval_dataset), cfg.eval.max_clips)
    eval_set = encode_clips(gidm, eval_dataset, view, eval_idx, cfg.eval.batch_size, desc="encoding eval clips",
                            progress=cfg.trainer.progress)
    # attention maps for a few clips spread over the held-out split (different episodes and tasks)
    positions = evenly_spaced(len(eval_idx), cfg.eval.attention_examples) if cfg.eval.attention_examples else []
    items = [eval_dataset[eval_idx[i]] for i in positions]
    shown = {"positions": torch.tensor(positions, dtype=torch.long),
             "images": torch.stack([it["images"][view] for it in items]),
             "goal_images": torch.stack([it["goal_images"][view] for it in items])} if items else None
    if probe_dataset is eval_dataset:
        probe_set = eval_set
    else:
        probe_idx = evenly_spaced(len(probe_dataset), cfg.eval.max_clips)
        probe_set = encode_clips(gidm, probe_dataset, view, probe_idx, cfg.eval.batch_size,
                                 desc="encoding probe clips", progress=cfg.trainer.progress)

    module = GIDMPretrainModule(gidm, view, cfg.pair_shift)
    last: dict[str, Any] = {}

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        out = evaluate_gidm(model, eval_set, probe_set, cfg.eval, shown,
                            runner.run_dir / "attention" / f"step_{step:07d}.png" if runner.is_main else None)
        last.clear()
        last.update(out)
        return out

    final, result = runner.train(module, train_set, eval_fn)
    metrics = stage_metrics("pretrain-idm", cfg, result, last, len(train_set), len(eval_set),
                            parameter_counts(final.gidm))
    runner.save(final.gidm)
    return runner.finish(metrics)


# ----------------------------------------------------------------------------------------------- presets
@preset(PretrainIDMConfig, "tiny")
def _tiny() -> PretrainIDMConfig:
    return PretrainIDMConfig(
        run_dir=Path("runs/pretrain-idm-tiny"),
        data=replace(DataConfig.preset("tiny"), image_size=32),
        model=GIDMConfig.preset("tiny"),
        trainer=TrainerConfig(max_steps=20, batch_size=8, warmup_steps=2, lr=1e-3, ema_decay=0.0,
                              checkpoint_every=1000, log_every=5, progress=False),
        eval=IDMEvalConfig(max_clips=64, batch_size=32, attention_examples=2),
    )


@preset(PretrainIDMConfig, "small")
def _small() -> PretrainIDMConfig:
    # the GIDM reads o_t and o_{t+n} only: no future clip frames; an action chunk as long as the ~1 s interval
    # (80 steps at Meta-World's 80 fps) so that the probe's target is the mean action over o_t -> o_{t+n}
    data = replace(DataConfig.preset("small"), cameras=("corner",), future_frames=1, action_horizon=80)
    return PretrainIDMConfig(
        data=data, model=GIDMConfig.preset("small"),
        trainer=TrainerConfig(max_steps=1000, batch_size=32, lr=5e-4, warmup_steps=50, ema_decay=0.0,
                              checkpoint_every=500, log_every=25, eval_every=500),
    )


@preset(PretrainIDMConfig, "paper")
def _paper() -> PretrainIDMConfig:
    # DINOv2 ViT-B/14 at 224 px and T5-base (paper §3.2); AdamW lr 1e-4, wd 1e-2, batch 32 per GPU (Table 10)
    return PretrainIDMConfig(
        data=replace(DataConfig.preset("paper"), cameras=("static", "gripper")),
        model=GIDMConfig.preset("paper"),
        trainer=TrainerConfig(max_steps=200_000, batch_size=32, lr=1e-4, weight_decay=1e-2, warmup_steps=2000,
                              checkpoint_every=5000, eval_every=10_000),
    )


@preset(PretrainIDMConfig, "calvin-paper")
def _calvin_paper() -> PretrainIDMConfig:
    # CALVIN ABC->D (defi.data.sources.calvin): the training split's play stream and annotated windows, the static
    # view only (the GIDM's camera), o_{t+n} 30 frames (1 s at 30 Hz) ahead and a 30-step action chunk, so that
    # the probe's target is the mean action over o_t -> o_{t+n}; another split root: --data.sources PATH 1.0 ...
    from defi.data.config import data_calvin_pretrain_paper

    base = PretrainIDMConfig.preset("paper")
    model = replace(base.model, camera="static")
    data = replace(data_calvin_pretrain_paper(), cameras=("static",), future_frames=1, action_horizon=30)
    return replace(base, model=model, data=data, run_dir=Path("runs/pretrain-idm/calvin"))


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures `defi pretrain-idm` prints."""
    keys = ("mse", "copy_mse", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action",
            "probe_r2_feature_diff")
    return {k: metrics["held_out"][k] for k in keys if k in metrics["held_out"]}
