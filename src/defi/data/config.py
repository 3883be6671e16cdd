"""`DataConfig`: which stores a stage trains on and how clips are cut; `build_clip_dataset` builds the dataset.

Every training stage holds a `DataConfig` and calls `build_clip_dataset(cfg, "train")` (and "val"). One source
gives a `ClipDataset`; several give a `MixtureDataset` whose `sample_weights` realise the per-source weights.
Both expose `action_stats` / `state_stats` ({"mean", "std", "min", "max"} float32 tensors, or None when no
source has actions / states) for normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from defi.config import Config, preset

if TYPE_CHECKING:
    from torch.utils.data import Dataset


@dataclass
class DataConfig(Config):
    sources: list[tuple[str, float]] = field(default_factory=lambda: [("data/metaworld", 1.0)])
    """(store directory, weight) pairs; weights set each source's share of the sampled clips."""
    cameras: tuple[str, ...] = ("corner",)
    """Views per clip (V); e.g. corner (static) and gripperPOV (wrist)."""
    interval_s: float = 1.0
    """Seconds between o_t and the goal frame o_{t+n}; n = round(interval_s * fps) per source (paper §3.2)."""
    future_frames: int = 8
    """Future frames F predicted by the forward model."""
    future_stride: int = 1
    """Frames between consecutive future frames."""
    action_horizon: int = 8
    """Action chunk length Ha."""
    val_fraction: float = 0.1
    """Fraction of each source's episodes held out for validation."""
    seed: int = 0
    image_size: int = 64
    """Clips are resized to image_size x image_size when a store differs."""
    action_dim: int = 4
    state_dim: int = 4
    paraphrase: bool = False
    """Draw one of the training paraphrases per clip instead of the stored instruction (Meta-World tasks)."""
    cache_mb: float = 512
    """Per-process cache of decoded chunks, per source."""
    episode_fraction: float = 1.0
    """Train on this fraction of each task's training episodes (a nested, seeded subset; paper Figure 4)."""

    def validate(self) -> None:
        self.check(len(self.sources) >= 1, "sources", "at least one (path, weight) pair")
        self.check(all(w > 0 for _, w in self.sources), "sources", "weights > 0")
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")
        self.check(self.interval_s > 0, "interval_s", "> 0 seconds")
        self.check(self.future_frames >= 1, "future_frames", ">= 1")
        self.check(self.future_stride >= 1, "future_stride", ">= 1")
        self.check(self.action_horizon >= 1, "action_horizon", ">= 1")
        self.check(0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)")
        self.check(8 <= self.image_size <= 1024, "image_size", "between 8 and 1024")
        self.check(self.action_dim >= 1, "action_dim", ">= 1")
        self.check(self.state_dim >= 1, "state_dim", ">= 1")
        self.check(self.cache_mb >= 0, "cache_mb", ">= 0")
        self.check(0.0 < self.episode_fraction <= 1.0, "episode_fraction", "a fraction in (0, 1]")


@preset(DataConfig, "tiny")
def _tiny() -> DataConfig:
    return DataConfig(sources=[("data/metaworld-tiny", 1.0)], future_frames=4, action_horizon=4, val_fraction=0.25)


@preset(DataConfig, "small")
def _small() -> DataConfig:
    return DataConfig()


@preset(DataConfig, "paper")
def _paper() -> DataConfig:
    # Paper scale: 256x256 frames, 16 predicted frames (SVD), both views.
    return DataConfig(sources=[("data/metaworld-mt50", 1.0)], cameras=("corner", "gripperPOV"), image_size=256,
                      future_frames=16, action_horizon=16)



# CALVIN (the paper's benchmark, read in place by defi.data.sources.calvin): data configs built from a split root
DEFAULT_ROOT = "data/calvin/task_ABC_D"


def calvin_sources(root: str | Path = DEFAULT_ROOT, play: bool = False) -> list[tuple[str, float]]:
    """The `DataConfig.sources` of a split root's training split: its annotated windows, and with `play` also its
    play stream as action-free video, mixed 1:1 (the ratio is defi's choice, not a figure from the paper)."""
    root = Path(root)
    lang = [(str(root / "training" / "lang_annotations"), 1.0)]
    return [*lang, (str(root / "training"), 1.0)] if play else lang


def data_calvin_paper(root: str | Path = DEFAULT_ROOT):
    """Finetuning on CALVIN ABC->D: the annotated windows of the training split (scenes A, B, C), both views at
    256 px, 7-d relative actions, 10-step chunks, a goal frame ~1 s ahead (30 frames at 30 Hz). state_dim=15 is
    what robot_obs holds; a policy with state_dim=0 (the paper's) does not read it."""
    # val_fraction: held-out windows only watch the loss; kept small since the benchmark trains on the whole split
    return DataConfig(sources=calvin_sources(root), cameras=("static", "gripper"), interval_s=1.0, future_frames=16,
                      future_stride=1, action_horizon=10, val_fraction=0.02, image_size=256, action_dim=7,
                      state_dim=15)


def data_calvin_pretrain_paper(root: str | Path = DEFAULT_ROOT):
    """Pretraining on CALVIN ABC->D: `data_calvin_paper` with the whole play stream mixed 1:1 with the annotated
    windows, so that text-conditioned clips are seen too."""
    from dataclasses import replace

    return replace(data_calvin_paper(root), sources=calvin_sources(root, play=True))


def data_calvin_tiny(root: str | Path):
    """A few-second configuration for tests and smoke runs on a tiny split."""
    from dataclasses import replace

    return replace(data_calvin_paper(root), image_size=32, future_frames=2, action_horizon=4, val_fraction=0.25,
                   cache_mb=16)


def build_clip_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The clip dataset of `split` ("train", "val" or "all") for `cfg`."""
    from defi.config import validate_config
    from defi.data.clips import ClipDataset
    from defi.data.mixture import MixtureDataset

    validate_config(cfg)
    datasets = [
        ClipDataset(
            path, cameras=cfg.cameras, interval_s=cfg.interval_s, future_frames=cfg.future_frames,
            future_stride=cfg.future_stride, action_horizon=cfg.action_horizon, split=split,
            val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size, action_dim=cfg.action_dim,
            state_dim=cfg.state_dim, paraphrase=cfg.paraphrase, cache_mb=cfg.cache_mb,
            episode_fraction=cfg.episode_fraction,
        )
        for path, _ in cfg.sources
    ]
    if len(datasets) == 1:
        return datasets[0]
    return MixtureDataset(datasets, [w for _, w in cfg.sources])
