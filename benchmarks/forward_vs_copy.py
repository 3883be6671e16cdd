"""Does the compact GFDM beat copy-the-current-frame on held-out Meta-World clips (decoded pixel MSE)?

Two steps, each a subcommand:
  generate: roll out Meta-World v3 scripted experts and save 64x64 frames per episode as .npz under data/
            (a short stand-in for the data branch's generator, which had not landed when this was written);
  train:    run the `defi pretrain-fdm` stage at the `small` preset on those episodes for a wall-clock budget,
            then report held-out decoded-pixel MSE / PSNR of the model and of the copy baseline.

    MUJOCO_GL=egl python benchmarks/forward_vs_copy.py generate --out data/gfdm_mw --episodes 6
    python benchmarks/forward_vs_copy.py train --data data/gfdm_mw --minutes 10 --run runs/gfdm_mw
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
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        generate(args.out, args.episodes, args.max_steps, args.cameras, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
