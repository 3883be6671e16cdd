"""Does the compact GFDM beat copy-the-current-frame on held-out Meta-World clips (decoded pixel MSE)?

Two steps, each a subcommand:
  generate: roll out Meta-World v3 scripted experts and save 64x64 frames per episode as .npz under data/
            (a short stand-in for the data branch's generator, which had not landed when this was written);
  train:    run the `defi pretrain-fdm` stage at the `small` preset on those episodes for a wall-clock budget,
            then report held-out decoded-pixel MSE / PSNR of the model and of the copy baseline.

    MUJOCO_GL=egl python benchmarks/forward_vs_copy.py generate --out data/gfdm_mw --episodes 6
    python benchmarks/forward_vs_copy.py train --data data/gfdm_mw --max-steps 800 --lr 1e-3 --run runs/pretrain-fdm/mw-check

Measured 2026-11-25 on the shared 2-core CPU (1 torch thread), 4 tasks x 6 episodes (reach, push, drawer-open,
button-press-topdown; 1 corner view; 5 train + 1 held-out episode per task; 1327 train / 268 held-out clips;
stride 3 control steps, 4 future frames), 64 evenly spaced held-out clips, 20 DDIM steps:
  800 steps, lr 1e-3, batch 8 (9.5 min wall, 354 s CPU):  sampled MSE 0.00203 (26.93 dB), one-step 0.00204
      (26.90 dB), copy 0.00254 (25.95 dB): model/copy = 0.80; per future frame 0.00116/0.00192/0.00238/0.00276
      vs copy 0.00124/0.00233/0.00307/0.00372.
  The same through the data layer and the stage (`defi data metaworld` store, its seeded 17% episode split; see
  README "Forward dynamics"): 800 steps (8.8 min wall, 447 s CPU): sampled 0.00266 (25.74 dB), one-step 0.00277,
  copy 0.00325 (24.88 dB): model/copy = 0.82.
  300 steps, lr 3e-4: sampled 0.00252 vs copy 0.00254 (0.99, a tie).
  300 steps, v-prediction (before the switch to z^(0)-prediction): 0.0109 vs 0.00254 (4.3x worse, noisy samples).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

TASKS = {
    "reach-v3": ("SawyerReachV3Policy", "reach the red target with the gripper"),
    "push-v3": ("SawyerPushV3Policy", "push the puck to the goal"),
    "drawer-open-v3": ("SawyerDrawerOpenV3Policy", "open the drawer"),
    "button-press-topdown-v3": ("SawyerButtonPressTopdownV3Policy", "press the button from the top"),
}


def generate(out: Path, episodes: int, max_steps: int, cameras: list[str], size: int, seed: int) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World envs)
    import metaworld.policies as policies
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(task, ep) for ep in range(episodes) for task in TASKS]
    for task, ep in tqdm(jobs, desc="meta-world episodes"):
        path = out / f"{task}_{ep:03d}.npz"
        if path.exists():
            continue
        policy_name, instruction = TASKS[task]
        policy = getattr(policies, policy_name)()
        envs = [
            gym.make("Meta-World/MT1", env_name=task, seed=seed + ep, render_mode="rgb_array",
                     camera_name=cam, width=size, height=size)
            for cam in cameras
        ]
        obs_per_env = [env.reset(seed=seed + ep)[0] for env in envs]
        frames = [[] for _ in cameras]  # per camera: list of [h, w, 3]
        actions = []
        success = False
        for _ in range(max_steps):
            for i, env in enumerate(envs):
                frames[i].append(env.render())
            action = policy.get_action(obs_per_env[0])
            actions.append(action)
            for i, env in enumerate(envs):
                obs_per_env[i], _, _, _, info = env.step(action)
            success = success or bool(info["success"])
            if success and len(actions) >= 20:
                # a few frames after success so that clips near the end still see the arm settle
                break
        for env in envs:
            env.close()
        np.savez_compressed(
            path, images=np.stack([np.stack(f) for f in frames]),  # [V, T, h, w, 3]
            actions=np.asarray(actions, np.float32), instruction=instruction, success=success,
        )


class NpzClips:
    """Clips in the defi.data contract from the .npz episodes above (held-out = the last `val_episodes` per task)."""

    def __init__(self, root: Path, split: str, num_frames: int, stride: int, val_episodes: int = 1):
        import torch

        self.torch = torch
        files = sorted(root.glob("*.npz"))
        by_task: dict[str, list[Path]] = {}
        for f in files:
            by_task.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
        chosen = [f for fs in by_task.values() for f in (fs[-val_episodes:] if split == "val" else fs[:-val_episodes])]
        self.episodes = []
        for f in chosen:
            d = np.load(f)
            self.episodes.append((torch.from_numpy(d["images"]).permute(0, 1, 4, 2, 3).contiguous(), str(d["instruction"])))
        self.index = [(e, t) for e, (imgs, _) in enumerate(self.episodes) for t in range(imgs.shape[1] - 1)]
        self.num_frames, self.stride = num_frames, stride

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        torch = self.torch
        e, t = self.index[i]
        images, instruction = self.episodes[e]  # [V, T, 3, h, w]
        last = images.shape[1] - 1
        wanted = torch.arange(1, self.num_frames + 1) * self.stride + t
        return {
            "images": images[:, t],
            "future_images": images[:, wanted.clamp(max=last)],
            "future_mask": wanted <= last,
            "instruction": instruction,
            "episode_index": e,
            "frame_index": t,
        }


def train(data: Path, run: Path, max_steps: int, stride: int, threads: int, eval_clips: int, lr: float) -> None:
    import torch

    from defi.train.pretrain_fdm import PRESETS, run_pretrain_fdm

    torch.set_num_threads(threads)
    cfg = PRESETS["small"]()
    cfg.run_dir = run
    cfg.trainer.max_steps = max_steps
    cfg.trainer.lr = lr
    cfg.trainer.eval_every = 0
    cfg.trainer.checkpoint_every = max_steps
    cfg.eval.clips = eval_clips
    train_ds = NpzClips(data, "train", cfg.model.num_frames, stride)
    val_ds = NpzClips(data, "val", cfg.model.num_frames, stride)
    print(f"train clips {len(train_ds)}, held-out clips {len(val_ds)}", flush=True)
    start = time.time()
    metrics = run_pretrain_fdm(cfg, train_ds, val_ds)
    held = metrics["held_out"]
    print(json.dumps({k: v for k, v in held.items()}, indent=1))
    print(f"wall time {time.time() - start:.0f} s (train {metrics['train']['train_time_s']:.0f} s), "
          f"{metrics['train'].get('samples_per_s', float('nan')):.2f} samples/s at the last log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--out", type=Path, default=Path("data/gfdm_mw"))
    gen.add_argument("--episodes", type=int, default=6, help="episodes per task")
    gen.add_argument("--max-steps", type=int, default=120)
    gen.add_argument("--cameras", nargs="+", default=["corner"])
    gen.add_argument("--size", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("train")
    tr.add_argument("--data", type=Path, default=Path("data/gfdm_mw"))
    tr.add_argument("--run", type=Path, default=Path("runs/pretrain-fdm/mw-check"))
    tr.add_argument("--max-steps", type=int, default=400)
    tr.add_argument("--stride", type=int, default=3, help="control steps between predicted frames")
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--eval-clips", type=int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.cmd == "train":
        train(args.data, args.run, args.max_steps, args.stride, args.threads, args.eval_clips, args.lr)
    if args.cmd == "generate":
        generate(args.out, args.episodes, args.max_steps, args.cameras, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
