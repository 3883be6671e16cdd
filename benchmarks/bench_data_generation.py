"""Meta-World generation speed: frames/s at 64x64, one camera, 1 worker process vs 2 (one per core).

Target (issue 3): >= 350 frames/s with 2 workers on an idle 2-core machine. Both figures come from the same run
on the same episodes, so their ratio is meaningful even when the machine is shared; the load average is printed.

    MUJOCO_GL=egl python benchmarks/bench_data_generation.py --tasks reach,push,button-press,drawer-close --episodes 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def run(tasks: str, episodes: int, workers: int, cameras: tuple[str, ...], size: int, root: Path):
    from defi.data.sources.metaworld import MetaWorldGenConfig, generate_metaworld

    out = root / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = MetaWorldGenConfig(out=out, tasks=tasks, episodes_per_task=episodes, cameras=cameras, image_size=size,
                             workers=workers, progress=False)
    start = time.perf_counter()
    report = generate_metaworld(cfg)
    wall = time.perf_counter() - start
    return report.frames / wall, report.frames, wall, report.steady_frames_per_s, report.first_result_s


def breakdown(task: str, cameras: tuple[str, ...], size: int, steps: int = 200) -> dict[str, float]:
    """Milliseconds per frame spent in physics, the scripted expert and rendering (one process)."""
    import numpy as np

    from defi.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, seed=0, cameras=cameras, image_size=size)
    times = {"physics": 0.0, "expert": 0.0, "render": 0.0}
    try:
        env.reset(seed=1)
        for _ in range(steps):
            t0 = time.perf_counter()
            action = env.expert_action()
            t1 = time.perf_counter()
            env._raw_obs, *_ = env._env.step(np.asarray(action, dtype=np.float32))
            t2 = time.perf_counter()
            env.render()
            t3 = time.perf_counter()
            times["expert"] += t1 - t0
            times["physics"] += t2 - t1
            times["render"] += t3 - t2
            if env._env.curr_path_length >= env.max_episode_steps - 1:
                env.reset(seed=2)
    finally:
        env.close()
    return {k: 1000 * v / steps for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="reach,push,button-press,drawer-close")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--cameras", default="corner")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (the first is the baseline)")
    args = parser.parse_args()
    cameras = tuple(c for c in args.cameras.split(",") if c)
    counts = [int(w) for w in args.workers.split(",")]
    print(f"cpu cores {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}, "
          f"{args.tasks} x {args.episodes} episodes, cameras {cameras}, {args.size}x{args.size}")
    ms = breakdown(args.tasks.split(",")[0] if not args.tasks.upper().startswith("MT") else "push", cameras, args.size)
    total = sum(ms.values())
    print("per frame, one process: " + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in ms.items())
          + f" -> {1000 / total:.0f} frames/s without storage")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            fps, frames, wall, steady, first = run(args.tasks, args.episodes, workers, cameras, args.size, Path(tmp))
            results[workers] = steady
            print(f"workers={workers}: {frames} frames in {wall:.1f} s -> {fps:.1f} frames/s overall; "
                  f"{steady:.1f} frames/s after the first episode ({first:.1f} s of start-up and first episode); "
                  f"load average {os.getloadavg()[0]:.2f}")
    base = counts[0]
    for workers in counts[1:]:
        print(f"speed-up {workers} vs {base} workers (after start-up): {results[workers] / results[base]:.2f}x")
    print(f"target >= 350 frames/s with 2 workers on an idle machine: best here {max(results.values()):.1f} frames/s")


if __name__ == "__main__":
    main()
