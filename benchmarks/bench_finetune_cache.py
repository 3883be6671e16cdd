"""DeFI finetuning speed with and without the frozen-feature cache (`FinetuneConfig.cache_frozen`).

    MUJOCO_GL=egl python benchmarks/bench_finetune_cache.py [--episodes 3] [--steps 20] [--batch-size 16]

Generates a small labeled Meta-World store (64x64, `reach`), builds the `small` DeFI policy (random weights, the
default Table 9 row gidm+adapter: GFDM frozen), builds the cache over the training split (timed), then times
training steps (data loading + collate + forward + backward + AdamW step) on the SAME index batches, uncached
and cached, alternating blocks of steps so that machine noise hits both. Prints steps/s of each, their ratio, the
cache build time, its size, and after how many steps the cache has paid for itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-episode-steps", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--trainable", default="gidm+adapter")
    args = parser.parse_args()

    from defi.config import replace
    from defi.data import DataConfig, build_clip_dataset
    from defi.data.sources.metaworld import MetaWorldGenConfig, generate_metaworld
    from defi.train.feature_cache import CachedDataset, build_feature_cache
    from defi.train.finetune import FinetuneConfig, build_policy

    tmp = Path(tempfile.mkdtemp(prefix="bench-ftcache-"))
    store = tmp / "store"
    generate_metaworld(MetaWorldGenConfig(out=store, tasks="reach", episodes_per_task=args.episodes,
                                          cameras=("corner",), image_size=64, seed=0,
                                          max_steps=args.max_episode_steps, workers=1, progress=False))
    cfg = FinetuneConfig.preset("small")
    cfg = replace(cfg, data=replace(DataConfig.preset("small"), sources=[(str(store), 1.0)], val_fraction=0.0),
                  defi=replace(cfg.defi, trainable=args.trainable))
    torch.manual_seed(0)
    policy, data_cfg = build_policy(cfg)
    train = build_clip_dataset(data_cfg, "train")
    policy.normalizer.set_stats({"action": train.action_stats, "observation.state": train.state_stats})

    start = time.perf_counter()
    cache = build_feature_cache(policy.frozen_features, train, batch_size=64, progress=True)
    build_s = time.perf_counter() - start
    cached = CachedDataset(cache, train)

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(train), (args.batch_size,), generator=gen).tolist() for _ in range(args.steps + 2)]
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    policy.train()

    def step(dataset, indices) -> None:
        batch = default_collate([dataset[i] for i in indices])
        loss = policy(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for indices in batches[:2]:  # warm-up, both paths
        step(train, indices)
        step(cached, indices)
    elapsed = {"uncached": 0.0, "cached": 0.0}
    block = 5
    for lo in range(2, len(batches), block):
        for name, dataset in (("uncached", train), ("cached", cached)):
            t0 = time.perf_counter()
            for indices in batches[lo:lo + block]:
                step(dataset, indices)
            elapsed[name] += time.perf_counter() - t0
    rate = {k: args.steps / v for k, v in elapsed.items()}
    saved = elapsed["uncached"] / args.steps - elapsed["cached"] / args.steps
    from defi.utils.environment import describe_cpu

    print(describe_cpu())
    print(f"DeFI finetuning, preset 'small', trainable={args.trainable}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {len(train)} training clips, {args.steps} timed steps per mode")
    print(f"cache: {', '.join(cache.features)}; {cache.nbytes() / 2**20:.1f} MiB "
          f"({cache.nbytes() / len(train) / 2**10:.1f} KiB/clip); built in {build_s:.1f} s "
          f"({len(train) / build_s:.1f} clips/s)")
    print(f"uncached {rate['uncached']:.2f} steps/s, cached {rate['cached']:.2f} steps/s, "
          f"ratio cached/uncached = {rate['cached'] / rate['uncached']:.2f}")
    if saved > 0:
        print(f"the cache pays for its build after {build_s / saved:.0f} steps")


if __name__ == "__main__":
    main()
