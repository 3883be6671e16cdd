"""Meta-World generation speed: frames/s at 64x64, one camera, 1 worker process vs 2 (one per core).

Target (issue 3): >= 350 frames/s with 2 workers on an idle 2-core machine. Every figure is measured in this run,
each configuration in a fresh process (llvmpipe reads LP_NUM_THREADS when the first GL context is made):

* llvmpipe's raster threads: its default (one per core; what single-process generation gets),
  LP_NUM_THREADS=1 (what pool workers get) and 0 (rasterise on the calling thread), all with the original
  meshes and identical images;
* "mesh_detail=X": the opt-in simplified robot meshes; their mean absolute pixel difference (0-255) to the
  original meshes on the same states is printed.

The per-frame breakdown (physics, expert, rendering) also splits rendering into the robot's meshes and the rest,
and gives rendering's CPU time (all threads), which a loaded machine inflates less than wall time.

    MUJOCO_GL=egl python benchmarks/bench_data_generation.py --tasks reach,push,button-press,drawer-close --episodes 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

UNSET = "unset"


def _in_fresh_process(fn, lp_threads: str, *args):
    """Run fn(*args) in a new spawned process whose LP_NUM_THREADS is `lp_threads` (or removed)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_set_lp,
                             initargs=(lp_threads,)) as pool:
        return pool.submit(fn, *args).result()


def _set_lp(lp_threads: str) -> None:
    os.environ.pop("LP_NUM_THREADS", None)
    if lp_threads != UNSET:
        os.environ["LP_NUM_THREADS"] = lp_threads


def generate(tasks: str, episodes: int, workers: int, cameras: tuple[str, ...], size: int, mesh_detail: float,
             out: str):
    import resource

    from defi.data.sources.metaworld import MetaWorldGenConfig, generate_metaworld

    shutil.rmtree(out, ignore_errors=True)
    cpu_before = _cpu_seconds(resource)
    cfg = MetaWorldGenConfig(out=Path(out), tasks=tasks, episodes_per_task=episodes, cameras=cameras,
                             image_size=size, workers=workers, mesh_detail=mesh_detail, progress=False)
    start = time.perf_counter()
    report = generate_metaworld(cfg)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds(resource) - cpu_before  # this process and its (finished) pool workers
    return report.frames / wall, report.frames, wall, report.steady_frames_per_s, report.first_result_s, cpu


def _cpu_seconds(resource) -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def breakdown(task: str, cameras: tuple[str, ...], size: int, mesh_detail: float, steps: int = 200):
    """Milliseconds per frame in physics, the expert, rendering (and of that, the meshes); pixel difference."""
    import mujoco
    import numpy as np

    from defi.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, seed=0, cameras=cameras, image_size=size, mesh_detail=mesh_detail)
    ref = MetaWorldEnv(task, seed=0, cameras=cameras, image_size=size) if mesh_detail < 1 else None
    times = {"physics": 0.0, "expert": 0.0, "render": 0.0}
    render_cpu = 0.0  # process CPU time (all threads): what the frame costs a core, whatever else runs
    diffs = []
    try:
        for e in [x for x in (env, ref) if x is not None]:
            e.reset(seed=1)
        for step in range(steps):
            t0 = time.perf_counter()
            action = env.expert_action()
            t1 = time.perf_counter()
            env._raw_obs, *_ = env._env.step(np.asarray(action, dtype=np.float32))
            t2 = time.perf_counter()
            c2 = time.process_time()
            images = env.render()
            t3 = time.perf_counter()
            render_cpu += time.process_time() - c2
            times["expert"] += t1 - t0
            times["physics"] += t2 - t1
            times["render"] += t3 - t2
            if ref is not None:
                ref._raw_obs, *_ = ref._env.step(np.asarray(action, dtype=np.float32))
                if step % 10 == 0:
                    ref_images = ref.render()
                    diffs += [np.abs(images[c].astype(np.int16) - ref_images[c]).mean() for c in cameras]
            if env._env.curr_path_length >= env.max_episode_steps - 1:
                for e in [x for x in (env, ref) if x is not None]:
                    e.reset(seed=2)
        # Rendering without the mesh geoms (the arm's links): the share the meshes cost.
        renderer, scene = env._renderer, env._renderer.scene
        start = time.perf_counter()
        for _ in range(50):
            for cam in cameras:
                env._camera.fixedcamid = env._camera_ids[cam]
                mujoco.mjv_updateScene(env._env.model, env._env.data, env._scene_option, None, env._camera,
                                       mujoco.mjtCatBit.mjCAT_ALL, scene)
                for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                             mujoco.mjtRndFlag.mjRND_SKYBOX):
                    scene.flags[flag] = 0
                for i in range(scene.ngeom):
                    if scene.geoms[i].type == mujoco.mjtGeom.mjGEOM_MESH:
                        scene.geoms[i].type = mujoco.mjtGeom.mjGEOM_NONE
                renderer.render()
        no_mesh = (time.perf_counter() - start) / 50
        faces = int(env._renderer.model.mesh_facenum.sum())
    finally:
        env.close()
        if ref is not None:
            ref.close()
    ms = {k: 1000 * v / steps for k, v in times.items()}
    ms["render CPU"] = 1000 * render_cpu / steps
    return ms, 1000 * no_mesh, faces, (float(np.mean(diffs)), float(np.max(diffs))) if diffs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="reach,push,button-press,drawer-close")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--cameras", default="corner")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--mesh-detail", default="0.25", help="opt-in mesh_detail values to compare ('' = none)")
    parser.add_argument("--skip-generation", action="store_true", help="only the per-frame breakdown")
    args = parser.parse_args()
    cameras = tuple(c for c in args.cameras.split(",") if c)
    counts = [int(w) for w in args.workers.split(",")]
    details = [float(x) for x in args.mesh_detail.split(",") if x]
    task = args.tasks.split(",")[0] if not args.tasks.upper().startswith("MT") else "push"
    from defi.utils.environment import describe_cpu

    print(describe_cpu())
    print(f"cpu cores {os.cpu_count()}, load average {os.getloadavg()}, {args.tasks} x {args.episodes} episodes, "
          f"cameras {cameras}, {args.size}x{args.size}")

    print(f"per frame, one process ({task}, 200 steps):")
    rows = [("LP_NUM_THREADS unset (single process)", UNSET, 1.0), ("LP_NUM_THREADS=1 (pool workers)", "1", 1.0),
            ("LP_NUM_THREADS=0", "0", 1.0)]
    rows += [(f"mesh_detail={d} (opt-in), LP_NUM_THREADS unset", UNSET, d) for d in details]
    base_render = None
    for name, lp, detail in rows:
        ms, no_mesh, faces, diff = _in_fresh_process(breakdown, lp, task, cameras, args.size, detail)
        total = ms["physics"] + ms["expert"] + ms["render"]
        base_render = base_render or ms["render"]
        line = (f"  {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
                + f" -> {1000 / total:.0f} frames/s without storage; render {ms['render'] / base_render:.2f}x of the"
                f" first row; render without mesh geoms {no_mesh:.2f} ms ({faces} mesh triangles in the GL context)")
        if diff is not None:
            line += f"; pixel difference to the original meshes: mean {diff[0]:.2f}, worst frame {diff[1]:.2f} /255"
        print(line + f"; load {os.getloadavg()[0]:.2f}")
    if args.skip_generation:
        return

    print("generation (store writing included; 'after first' excludes worker start-up and the first episode):")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            # The generator's own LP_NUM_THREADS setting applies (none in one process, 1 in pool workers).
            configs = [("default", UNSET, 1.0)] + [(f"mesh_detail={d}", UNSET, d) for d in details]
            for name, lp, detail in configs:
                fps, frames, wall, steady, first, cpu = _in_fresh_process(
                    generate, lp, args.tasks, args.episodes, workers, cameras, args.size, detail, f"{tmp}/out")
                results[(workers, name)] = steady
                print(f"  workers={workers} {name}: {frames} frames in {wall:.1f} s -> {fps:.1f} frames/s overall; "
                      f"{steady:.1f} frames/s after the first episode ({first:.1f} s start-up + first episode); "
                      f"{steady / results[(workers, 'default')]:.2f}x of default; "
                      f"CPU {1000 * cpu / frames:.2f} ms/frame (all processes, start-up included); "
                      f"load {os.getloadavg()[0]:.2f}")
    best = max(results.items(), key=lambda kv: kv[1])
    print(f"target >= 350 frames/s with 2 workers on an idle machine: best here {best[1]:.1f} frames/s ({best[0]})")


if __name__ == "__main__":
    main()
