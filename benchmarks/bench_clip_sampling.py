"""Clip sampling speed: clips/s from an episode store through a DataLoader at 64x64, H = 8.

Target (issue 3): >= 2,000 clips/s. Each clip is the full training item (o_t, o_{t+n}, 8 future frames,
8 actions, state, instruction) for the chosen views, collated into batches of 64 with shuffled indices. The
same run measures a baseline, the same clips cut from arrays already in RAM (the ceiling for this item layout),
and prints the ratio; the first pass over the data (cold chunk cache) and later passes are reported apart.

    MUJOCO_GL=egl python benchmarks/bench_clip_sampling.py                  # generates a small store first
    python benchmarks/bench_clip_sampling.py --store data/mt10 --cameras corner
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("MUJOCO_GL", "egl")


class InMemoryClips(Dataset):
    """Baseline: the same items cut from whole episodes held in RAM (no store, no chunk cache)."""

    def __init__(self, ds) -> None:
        self.ds = ds
        store = ds.store
        self.images = {e: np.stack([store.read(e, k) for k in ds.camera_keys]) for e in ds.episode_ids}
        self.actions = {e: store.read(e, "action") for e in ds.episode_ids} if ds.has_actions else None
        self.states = {e: store.read(e, "observation.state") for e in ds.episode_ids} if ds.has_state else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        ds = self.ds
        ep, t = ds.locate(index)
        imgs = self.images[ep]
        last = imgs.shape[1] - 1
        fut = t + ds.future_stride * np.arange(1, ds.future_frames + 1)
        frames = np.concatenate([[t, min(t + ds.goal_offset, last)], np.minimum(fut, last)])
        video = imgs[:, frames].transpose(0, 1, 4, 2, 3)
        actions = torch.zeros(ds.action_horizon, ds.action_dim)
        mask = torch.zeros(ds.action_horizon, dtype=torch.bool)
        if self.actions is not None:
            a = self.actions[ep][t : t + ds.action_horizon]
            actions[: len(a)] = torch.from_numpy(a)
            mask[: len(a)] = True
        state = torch.from_numpy(self.states[ep][t]) if self.states is not None else torch.zeros(ds.state_dim)
        return {"images": torch.from_numpy(np.ascontiguousarray(video[:, 0])),
                "goal_images": torch.from_numpy(np.ascontiguousarray(video[:, 1])),
                "future_images": torch.from_numpy(np.ascontiguousarray(video[:, 2:])),
                "future_mask": torch.from_numpy(fut <= last), "actions": actions, "action_mask": mask,
                "state": state, "has_actions": torch.tensor(ds.has_actions),
                "instruction": ds.store.episodes[ep]["task"], "source": ds.source,
                "episode_index": torch.tensor(ep), "frame_index": torch.tensor(t)}


def measure(ds, workers: int, batch: int, clips: int, seed: int = 0) -> tuple[float, float]:
    """(clips/s over the first epoch, clips/s over `clips` more) with the same persistent workers."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
    it = iter(loader)
    next(it)  # worker start-up is not clip sampling
    start, done = time.perf_counter(), 0
    for b in it:
        done += b["images"].shape[0]
    first = done / (time.perf_counter() - start)
    start, done = time.perf_counter(), 0
    while done < clips:
        for b in loader:
            done += b["images"].shape[0]
            if done >= clips:
                break
    return first, done / (time.perf_counter() - start)


def measure_inline(ds, clips: int, seed: int = 0) -> float:
    """Items/s built in this process (no DataLoader), after one warm-up pass over the same indices."""
    idx = np.random.default_rng(seed).integers(0, len(ds), size=clips)
    for i in idx:
        ds[int(i)]
    start = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="existing store (default: generate a small one)")
    parser.add_argument("--cameras", default="corner")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clips", type=int, default=6000, help="clips per measurement")
    args = parser.parse_args()
    from defi.data.clips import ClipDataset

    cameras = tuple(args.cameras.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from defi.data.sources.metaworld import MetaWorldGenConfig, generate_metaworld

            store = Path(tmp) / "store"
            generate_metaworld(MetaWorldGenConfig(out=store, tasks="reach,push,button-press,drawer-close",
                                                  episodes_per_task=3, cameras=cameras, progress=False))
        ds = ClipDataset(store, cameras=cameras, future_frames=8, action_horizon=8, split="all")
        from defi.utils.environment import describe_cpu

        print(describe_cpu())
        print(f"store {store}: {len(ds)} clips, views {cameras}, 64x64, H=8, batch {args.batch}, "
              f"{args.workers} DataLoader workers, cpu cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
        cold, warm = measure(ds, args.workers, args.batch, args.clips)
        _, base = measure(InMemoryClips(ds), args.workers, args.batch, args.clips)
        print(f"store, first epoch (cold chunk cache): {cold:.0f} clips/s")
        print(f"store, later epochs (warm cache):      {warm:.0f} clips/s")
        print(f"in-RAM baseline:                       {base:.0f} clips/s  (store/baseline {warm / base:.2f})")
        torch.set_num_threads(1)  # as in a DataLoader worker
        inline, inline_base = measure_inline(ds, 2000), measure_inline(InMemoryClips(ds), 2000)
        print(f"one process, no DataLoader:            {inline:.0f} items/s vs in-RAM {inline_base:.0f} "
              f"(store/baseline {inline / inline_base:.2f})")
        print(f"target >= 2000 clips/s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
