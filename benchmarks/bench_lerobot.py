"""Training on a LeRobot v3.0 dataset (mp4 video): read in place vs imported into an episode store.

Measured in one run on the same clips (64x64, one camera, interval 1 s, 8 future frames, 8 actions, batch 32,
shuffled, DataLoader workers as given):

- decoding speed of the camera (one process, episode by episode);
- in place: `LeRobotSource` (decodes a whole episode on first use, per worker, into its decoded-episode cache)
  under the clip sampler, which resizes every clip to 64x64; first epoch, later epochs with a cache that holds
  the dataset, the same with frames scaled to 64x64 as they are decoded (in-place reading at its best), and a
  few batches with a cache that cannot hold the dataset (every miss decodes an episode again);
- import: `defi data lerobot` (decode every frame once, resize to 64x64, write the store): seconds per 1,000
  frames;
- the imported store (the native format every stage reads): first and later epochs.

Without --dataset a synthetic LeRobot v3.0 dataset is made (a textured scene with moving objects, AV1 video
written like LeRobot's writer: libsvtav1, yuv420p, a keyframe every 2 frames, crf 30).

    python benchmarks/bench_lerobot.py                                   # 10 episodes x 150 frames, 240x320, 30 fps
    python benchmarks/bench_lerobot.py --dataset ~/lerobot/so101_pick --camera observation.images.front
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


def synthetic_store(root: Path, episodes: int, frames: int, height: int, width: int, fps: int) -> Path:
    """A defi store of smooth textured frames with two moving discs (so the video codec has real work)."""
    from defi.data.store import EpisodeStore, StoreInfo, feature_spec

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 40, size=(height, width, 3)).astype(np.float32)
    arrays = {"observation.images.front": np.zeros((1, height, width, 3), np.uint8),
              "observation.state": np.zeros((1, 6), np.float32), "action": np.zeros((1, 6), np.float32)}
    info = StoreInfo(fps=float(fps), cameras=["front"], image_size=[height, width], has_actions=True,
                     source="synthetic", robot_type="so101", features=feature_spec(["front"], [height, width], arrays))
    store = EpisodeStore.create(root, info)
    for e in range(episodes):
        video = np.empty((frames, height, width, 3), np.uint8)
        for t in range(frames):
            a = 2 * np.pi * (t / frames + e / episodes)
            cx, cy = width * (0.5 + 0.3 * np.cos(a)), height * (0.5 + 0.3 * np.sin(2 * a))
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.08 * width) ** 2)[..., None]
            base = np.stack([xx / width * 200, yy / height * 200, np.full_like(xx, 90)], -1) + texture
            video[t] = np.where(disc, [230, 40, 40], base).clip(0, 255).astype(np.uint8)
        joints = rng.normal(size=(frames, 6)).astype(np.float32).cumsum(0) * 0.1
        store.write_episode(f"ep{e:04d}", {"observation.images.front": video, "observation.state": joints,
                                          "action": np.roll(joints, -1, 0)}, {"task": f"move the disc {e % 3}"})
    store.finalize()
    return root


def measure(ds, workers: int, batch: int, epochs: int, max_clips: int = 0, seed: int = 0) -> list[float]:
    """clips/s of each of `epochs` passes over `ds` (or its first `max_clips` clips) through one DataLoader with
    persistent workers."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
    rates = []
    for _ in range(epochs):
        start, done = time.perf_counter(), 0
        for b in loader:
            done += b["images"].shape[0]
            if max_clips and done >= max_clips:
                break
        rates.append(done / (time.perf_counter() - start))
    return rates


def open_resized(path: Path, cache_mb: float = 512):
    from defi.data.sources.lerobot import LeRobotSource

    return LeRobotSource(path, cache_mb=cache_mb, decode_size=64)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=None, help="a LeRobot v3.0 dataset (default: synthetic)")
    parser.add_argument("--camera", default="observation.images.front", help="camera key to train on")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--frames", type=int, default=150, help="frames per synthetic episode")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="passes per measurement (the first is reported apart)")
    parser.add_argument("--small-cache-mb", type=float, default=32, help="in-place cache that cannot hold the data")
    parser.add_argument("--small-cache-clips", type=int, default=256, help="clips measured with the small cache")
    args = parser.parse_args()

    from defi.data.clips import ClipDataset
    from defi.data.sources import register_reader
    from defi.data.sources.lerobot import (
        LeRobotExportConfig,
        LeRobotImportConfig,
        LeRobotSource,
        export_lerobot,
        import_lerobot,
        is_lerobot_dataset,
    )

    # In place: swap the registry's "import first" entry for the reader itself, for this measurement only.
    register_reader("lerobot", is_lerobot_dataset, "defi.data.sources.lerobot:LeRobotSource")
    clip = {"future_frames": 8, "action_horizon": 8, "split": "all", "image_size": 64, "interval_s": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset
        if dataset is None:
            start = time.perf_counter()
            src = synthetic_store(tmp / "src", args.episodes, args.frames, args.height, args.width, args.fps)
            dataset = tmp / "lerobot"
            export_lerobot(LeRobotExportConfig(store=src, out=dataset, progress=False))
            print(f"synthetic LeRobot v3.0 dataset: {args.episodes} episodes x {args.frames} frames, "
                  f"{args.height}x{args.width} AV1 at {args.fps} fps, made in {time.perf_counter() - start:.0f} s")
        source = LeRobotSource(dataset)
        frames, fps = source.info.total_frames, source.fps
        state_dim = int(source.features["observation.state"]["shape"][0])
        action_dim = int(source.features["action"]["shape"][0])
        video_mb = sum(p.stat().st_size for p in Path(dataset, "videos").rglob("*.mp4")) / 2**20
        print(f"dataset {dataset}: {len(source.source_episodes)} episodes, {frames} frames at {fps:g} fps, "
              f"{video_mb:.1f} MiB of mp4")
        from defi.utils.environment import describe_cpu

        print(describe_cpu())
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
              f"{args.workers} DataLoader workers, batch {args.batch}, load average {os.getloadavg()[0]:.2f}")
        dims = {"state_dim": state_dim, "action_dim": action_dim,
                "cameras": (source.info.cameras[source.camera_keys.index(args.camera)],)}

        start = time.perf_counter()
        for ep in source.source_episodes:
            source.frames(ep, args.camera)
        decode_s = time.perf_counter() - start
        source.close()

        big = frames * int(np.prod(source.info.image_size)) * 3 / 2**20 * 1.2 + 64
        in_place = measure(ClipDataset(dataset, cache_mb=big, **clip, **dims), args.workers, args.batch, args.epochs)
        # The best case in place: frames scaled to the training size as they are decoded (the cache then holds
        # the dataset at 64x64; every run and every worker still decodes it once).
        register_reader("lerobot", is_lerobot_dataset, "__main__:open_resized")
        resized = measure(ClipDataset(dataset, **clip, **dims), args.workers, args.batch, args.epochs)
        register_reader("lerobot", is_lerobot_dataset, "defi.data.sources.lerobot:LeRobotSource")
        # Every clip misses a cache smaller than one worker's share of decoded episodes: one pass of a few
        # batches shows the steady rate (a whole epoch would take an episode decode per clip).
        small = measure(ClipDataset(dataset, cache_mb=args.small_cache_mb, **clip, **dims), args.workers,
                        args.batch, 1, max_clips=args.small_cache_clips)

        start = time.perf_counter()
        report = import_lerobot(LeRobotImportConfig(path=dataset, out=tmp / "store", size=64, progress=False,
                                                    camera_map=(f"{args.camera}=front",)))
        import_s = time.perf_counter() - start
        store = measure(ClipDataset(tmp / "store", **clip, **{**dims, "cameras": ("front",)}), args.workers,
                        args.batch, args.epochs)

        later = lambda rates: np.mean(rates[1:]) if len(rates) > 1 else rates[0]
        print(f"decoding {args.camera} in one process: {frames / decode_s:.0f} frames/s "
              f"({1000 * decode_s / frames:.2f} ms per frame)")
        print(f"in place, first epoch (decoding):                      {in_place[0]:8.0f} clips/s")
        print(f"in place, later epochs (cache {big:.0f} MiB holds the data):  {later(in_place):8.0f} clips/s")
        print(f"in place, decoded to 64x64, first epoch:              {resized[0]:8.0f} clips/s")
        print(f"in place, decoded to 64x64, later epochs:             {later(resized):8.0f} clips/s")
        print(f"in place, cache {args.small_cache_mb:.0f} MiB (each clip decodes its episode): {small[0]:8.0f} clips/s "
              f"({args.small_cache_clips} clips)")
        print(f"import to a 64x64 store: {import_s:.1f} s for {report.frames} frames = "
              f"{1000 * import_s / report.frames:.2f} s per 1,000 frames")
        print(f"imported store, first epoch:                           {store[0]:8.0f} clips/s")
        print(f"imported store, later epochs:                          {later(store):8.0f} clips/s")
        print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
