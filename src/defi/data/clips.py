"""The clip sampler: a map-style Dataset of clips cut from one episode store.

Every frame t of every episode in the split is one index. Its item (the clip-batch contract of the project):

    "images":        uint8   [V, 3, h, w]     o_t for each selected camera
    "goal_images":   uint8   [V, 3, h, w]     o_{t+n}, n = max(1, round(interval_s * fps)) (clamped at the end)
    "future_images": uint8   [V, F, 3, h, w]  o_{t+k*stride}, k = 1..F (clamped to the last frame)
    "future_mask":   bool    [F]              False where t+k*stride ran past the episode end
    "actions":       float32 [Ha, A]          a_t .. a_{t+Ha-1} (zeros without actions)
    "action_mask":   bool    [Ha]             False past the episode end or without actions
    "state":         float32 [S]              proprio state at t (zeros without state)
    "has_actions":   bool
    "instruction":   str
    "source":        str
    "episode_index": int64,  "frame_index": int64

The frame interval is given in seconds and converted with each store's fps (paper §3.2: ~1 s whatever the
source's frame rate); the future stride is in frames. Items depend only on (seed, index), so the trainer's
seeded sampler and DDP sharding see the same data on every rank and worker; stores open lazily per process.
The split is by episode: a seeded permutation puts `val_fraction` of the episodes (at least one when the
fraction is positive and there are two or more) into "val".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from defi.data.sources import open_source
from defi.data.store import IMAGE_PREFIX
from defi.errors import DefiError

SPLITS = ("train", "val", "all")


def split_episodes(num_episodes: int, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Episode indices of a split (sorted)."""
    if split not in SPLITS:
        raise DefiError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if split == "all" or val_fraction <= 0:
        return np.arange(num_episodes) if split != "val" else np.arange(0)
    num_val = max(1, int(round(val_fraction * num_episodes))) if num_episodes >= 2 else 0
    order = np.random.default_rng(seed).permutation(num_episodes)
    chosen = order[:num_val] if split == "val" else order[num_val:]
    return np.sort(chosen)


def evenly_spaced(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over range(n) (all of them when n <= k): held-out clips to score or draw."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _stats_to_torch(stats: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if stats is None else {k: torch.as_tensor(v, dtype=torch.float32) for k, v in stats.items()}


def subsample_episodes(records: Sequence[dict], episode_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep `fraction` of each task's episodes (at least one per task; paper Figure 4's 10/20/50/100% of the
    labeled data). Per task, the kept episodes are a prefix of one seeded permutation, so smaller fractions are
    subsets of larger ones and rows of a data-efficiency curve differ only in how much data they see."""
    if not 0.0 < fraction <= 1.0:
        raise DefiError(f"episode_fraction={fraction}: expected a fraction in (0, 1]")
    by_task: dict[str, list[int]] = {}
    for e in episode_ids.tolist():
        by_task.setdefault(str(records[e].get("task", "")), []).append(e)
    kept: list[int] = []
    for task in sorted(by_task):
        ids = by_task[task]
        order = np.random.default_rng([seed, len(ids)]).permutation(len(ids))
        count = max(1, int(round(fraction * len(ids))))
        kept += [ids[i] for i in order[:count]]
    return np.array(sorted(kept), dtype=np.int64)


class ClipDataset(Dataset):
    """Clips from one episode store. See the module docstring for the item layout."""

    def __init__(
        self,
        root: str | Path,
        cameras: Sequence[str] = ("corner",),
        interval_s: float = 1.0,
        future_frames: int = 8,
        future_stride: int = 1,
        action_horizon: int = 8,
        split: str = "train",
        val_fraction: float = 0.0,
        seed: int = 0,
        image_size: int | None = None,
        action_dim: int = 4,
        state_dim: int = 4,
        paraphrase: bool = False,
        cache_mb: float = 512,
        episode_fraction: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.store = open_source(self.root, cache_mb=cache_mb)
        info = self.store.info
        self.source = str(info.source)
        self.fps = float(info.fps)
        self.interval_s = float(interval_s)
        self.goal_offset = max(1, int(round(interval_s * self.fps)))
        self.future_frames = int(future_frames)
        self.future_stride = int(future_stride)
        self.action_horizon = int(action_horizon)
        self.seed = int(seed)
        self.paraphrase = paraphrase
        self.split = split
        self.cameras = list(cameras)
        self.camera_keys = [IMAGE_PREFIX + c for c in self._map_cameras(list(cameras), list(info.cameras))]
        stored_h, stored_w = info.image_size
        self._stored_hw = (int(stored_h), int(stored_w))
        # A source may keep each camera at its own size (CALVIN: static 200 px, gripper 84 px); the features'
        # per-frame shapes say so, and such views are resized one by one.
        self._view_hw = [self._camera_hw(info, key) for key in self.camera_keys]
        if image_size is None and len(set(self._view_hw)) > 1:
            raise DefiError(f"{self.root}: cameras have different sizes {dict(zip(self.cameras, self._view_hw))}; "
                            "set image_size to resize them to one")
        self.image_size = self._view_hw[0] if image_size is None else (int(image_size), int(image_size))
        self.has_actions = bool(info.has_actions) and "action" in info.features
        self.has_state = "observation.state" in info.features
        self.action_dim = int(action_dim)
        self.state_dim = int(state_dim)
        if self.has_actions and info.features["action"]["shape"] != [self.action_dim]:
            raise DefiError(
                f"{self.root}: actions have shape {info.features['action']['shape']}, expected [{self.action_dim}]"
            )
        if self.has_state and info.features["observation.state"]["shape"] != [self.state_dim]:
            raise DefiError(
                f"{self.root}: states have shape {info.features['observation.state']['shape']}, "
                f"expected [{self.state_dim}]"
            )
        self.episode_ids = split_episodes(len(self.store.episodes), split, val_fraction, seed)
        if episode_fraction < 1.0 and split == "train":
            self.episode_ids = subsample_episodes(self.store.episodes, self.episode_ids, episode_fraction, seed)
        lengths = np.array([self.store.episodes[e]["length"] for e in self.episode_ids], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._lengths = lengths
        stats = self.store.stats() if (self.has_actions or self.has_state) else {}
        self.action_stats = _stats_to_torch(stats.get("action")) if self.has_actions else None
        self.state_stats = _stats_to_torch(stats.get("observation.state")) if self.has_state else None

    def _map_cameras(self, wanted: list[str], available: list[str]) -> list[str]:
        missing = [c for c in wanted if c not in available]
        if not missing:
            return wanted
        # A single-camera source (a human video) fills a single-view request whatever its camera is named.
        if len(wanted) == 1 and len(available) == 1:
            return available
        hint = ""
        if str(self.store.info.source).startswith("lerobot"):
            hint = "; name a LeRobot dataset's cameras at import: defi data lerobot PATH --camera-map KEY=CAMERA ..."
        raise DefiError(f"{self.root}: has no camera {missing[0]!r} (the store's cameras: {', '.join(available)}; "
                        f"the policy's: {', '.join(wanted)}){hint}")

    def _camera_hw(self, info: Any, key: str) -> tuple[int, int]:
        shape = info.features.get(key, {}).get("shape")
        if shape is not None and len(shape) == 3:
            return int(shape[0]), int(shape[1])
        return self._stored_hw

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index in the store, frame index) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        pos = int(np.searchsorted(self._starts, index, side="right") - 1)
        return int(self.episode_ids[pos]), int(index - self._starts[pos])

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.image_size:
            return images
        out = torch.nn.functional.interpolate(images.float(), size=self.image_size, mode="bilinear",
                                              antialias=True, align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, t = self.locate(int(index))
        record = self.store.episodes[episode]
        length = int(record["length"])
        last = length - 1
        future = t + self.future_stride * np.arange(1, self.future_frames + 1)
        frames = np.concatenate([[t, min(t + self.goal_offset, last)], np.minimum(future, last)])
        if len(set(self._view_hw)) == 1:
            raw = np.empty((len(self.camera_keys), len(frames), *self._view_hw[0], 3), dtype=np.uint8)  # v n h w c
            for v, key in enumerate(self.camera_keys):
                self.store.read(episode, key, frames, out=raw[v])
            # One layout copy in numpy: single-threaded (torch's would use its thread pool in the main process).
            video = np.ascontiguousarray(raw.transpose(0, 1, 4, 2, 3))  # v n c h w
            if tuple(video.shape[-2:]) != self.image_size:
                v, n = video.shape[:2]
                resized = self._resize(torch.from_numpy(video).reshape(v * n, *video.shape[2:]))
                video = resized.reshape(v, n, 3, *self.image_size).numpy()
        else:
            views = []
            for key, hw in zip(self.camera_keys, self._view_hw):
                raw = self.store.read(episode, key, frames, out=np.empty((len(frames), *hw, 3), dtype=np.uint8))
                view = np.ascontiguousarray(raw.transpose(0, 3, 1, 2))  # n c h w
                if hw != self.image_size:
                    view = self._resize(torch.from_numpy(view)).numpy()
                views.append(view)
            video = np.stack(views)
        video_t = torch.from_numpy(video)
        item: dict[str, Any] = {
            "images": video_t[:, 0],  # views of one buffer; collation copies them into the batch
            "goal_images": video_t[:, 1],
            "future_images": video_t[:, 2:],
            "future_mask": torch.from_numpy(future <= last),
        }
        actions = torch.zeros(self.action_horizon, self.action_dim)
        action_mask = torch.zeros(self.action_horizon, dtype=torch.bool)
        if self.has_actions:
            chunk = self.store.read_episode(episode, "action")[t : t + self.action_horizon]
            actions[: len(chunk)] = torch.from_numpy(chunk.astype(np.float32, copy=False))
            action_mask[: len(chunk)] = True
        state = torch.zeros(self.state_dim)
        if self.has_state:
            state = torch.from_numpy(self.store.read_episode(episode, "observation.state")[t].astype(np.float32))
        item.update(
            actions=actions,
            action_mask=action_mask,
            state=state,
            has_actions=torch.tensor(self.has_actions),
            instruction=self._instruction(record, index),
            source=self.source,
            episode_index=torch.tensor(episode, dtype=torch.int64),
            frame_index=torch.tensor(t, dtype=torch.int64),
        )
        return item

    def _instruction(self, record: dict[str, Any], index: int) -> str:
        text = str(record.get("task", ""))
        if self.paraphrase and record.get("task_name"):
            from defi.data.instructions import has_instructions, sample_instruction

            if has_instructions(record["task_name"]):
                rng = np.random.default_rng([self.seed, int(index)])
                text = sample_instruction(record["task_name"], rng)
        return text
