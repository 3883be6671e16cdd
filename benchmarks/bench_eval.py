"""Closed-loop evaluation throughput: the same episodes one policy call per environment per process (the former
path: `num_workers` processes, batch 1) vs environments in lockstep with one batched policy call per step
(`batch_size` N), measured in one run on the same machine; prints episodes/min and the ratio.

    MUJOCO_GL=egl python benchmarks/bench_eval.py                     # 40 episodes: 4 tasks x 10, DeFI `small`
    MUJOCO_GL=egl python benchmarks/bench_eval.py --batch-sizes 4 8 20 --max-episode-steps 200
    MUJOCO_GL=egl python benchmarks/bench_eval.py --breakdown        # where an episode's time goes, by part

The policy is the DeFI policy at the `small` preset with random weights (the compute of a finetuned one; its
episodes mostly run to the step limit, the expensive case). Both paths give the same results: every episode seeds
its sampling noise with its own seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3", "dial-turn-v3", "handle-pull-side-v3"])
    parser.add_argument("--episodes-per-task", type=int, default=10)
    parser.add_argument("--max-episode-steps", type=int, default=500)
    parser.add_argument("--execute-steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="processes of the former path (one per core)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20])
    parser.add_argument("--batched-workers", type=int, default=2, help="processes of the batched path")
    parser.add_argument("--camera", default="workspace_close")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: policy cost per environment at batch 1/4/10/20, physics step, render, build")
    args = parser.parse_args(argv)

    import torch

    from defi.config import replace
    from defi.eval.metaworld import EvalConfig, evaluate
    from defi.policies.defi import DeFIConfig, DeFIPolicy
    from defi.utils.environment import describe_cpu

    torch.manual_seed(0)
    cfg = DeFIConfig.preset("small")
    cfg = replace(cfg, cameras=(args.camera,), inverse=replace(cfg.inverse, camera=args.camera))
    policy = DeFIPolicy(cfg)
    unit = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
    policy.normalizer.set_stats({"action": unit, "observation.state": unit})
    if args.breakdown:
        return breakdown(policy, args)
    policy_dir = policy.save_pretrained(Path(tempfile.mkdtemp(prefix="bench-eval-")) / "policy")

    base = dict(tasks=tuple(args.tasks), episodes_per_task=args.episodes_per_task, cameras=(args.camera,),
                max_episode_steps=args.max_episode_steps, execute_steps=args.execute_steps, video_episodes=0)
    episodes = len(args.tasks) * args.episodes_per_task
    print(f"{episodes} episodes ({', '.join(args.tasks)}), <= {args.max_episode_steps} steps, chunk of "
          f"{args.execute_steps} executed per call, camera {args.camera}; DeFI small, random weights; "
          f"{describe_cpu(threads=1)} per process")
    rows = {}
    modes = [("former: %d processes, batch 1" % args.workers, dict(num_workers=args.workers, batch_size=1))]
    modes += [(f"batched: {args.batched_workers} processes, batch {b}",
               dict(num_workers=args.batched_workers, batch_size=b)) for b in args.batch_sizes]
    results = {}
    for name, extra in modes:
        out = Path(tempfile.mkdtemp(prefix="bench-eval-run-"))
        start = time.perf_counter()
        metrics = evaluate(None, EvalConfig(**base, **extra), out, policy_dir=policy_dir, label=name)
        wall = time.perf_counter() - start
        rows[name] = 60 * episodes / wall
        results[name] = [(e["task"], e["episode"], e["success"], e["steps"]) for e in metrics["episodes"]]
        print(f"  {name:32s} {wall:7.1f} s  {rows[name]:6.1f} episodes/min  "
              f"({rows[name] / rows[modes[0][0]]:.2f}x the former path)", flush=True)
    same = all(sorted(r) == sorted(results[modes[0][0]]) for r in results.values())
    print(f"every path gave the same episode results: {same}")
    return 0


def breakdown(policy, args: argparse.Namespace) -> int:
    """The parts of a batched evaluation's CPU time, each timed alone in this process (one thread)."""
    import numpy as np
    import torch

    from defi.envs.metaworld import MetaWorldEnv
    from defi.eval.latency import paired
    from defi.policies.base import act_batch
    from defi.utils.environment import describe_cpu

    torch.set_num_threads(1)
    print(f"DeFI small, random weights, camera {args.camera} 64x64; {describe_cpu(threads=1)}")
    policy.eval()
    rng = np.random.default_rng(0)
    obs = {f"observation.images.{args.camera}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
           "observation.state": np.zeros(4, np.float32)}
    for batch in (1, 4, 10, 20):
        forks = [policy.fork() for _ in range(batch)]
        for fork in forks:
            fork.reset(seed=0)
        ms = paired({"call": lambda: act_batch(forks, [obs] * batch, ["reach the goal"] * batch)}, 5)["call"]
        call = float(np.median(ms))
        print(f"  policy, batch {batch:2d}: {call:7.1f} ms a call, {call / batch:6.1f} ms per environment")
    for task in args.tasks:
        start = time.perf_counter()
        env = MetaWorldEnv(task, seed=0, cameras=(args.camera,), image_size=64)
        first = time.perf_counter() - start
        start = time.perf_counter()
        MetaWorldEnv(task, seed=1, cameras=(args.camera,), image_size=64).close()  # renderer shared with `env`
        again = time.perf_counter() - start
        env.reset(seed=0)
        action = np.zeros(4, np.float32)
        step = paired({"step": lambda: env.step(action, render=False)}, 200)["step"]
        render = paired({"render": env.render}, 50)["render"]
        print(f"  {task}: build {1e3 * first:.0f} ms (first of the task; {1e3 * again:.0f} ms with its renderer "
              f"shared), physics step {np.median(step):.2f} ms, 64x64 render {np.median(render):.1f} ms")
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
