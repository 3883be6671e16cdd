"""Which Meta-World tasks and views need sight: are the scene's random positions visible, and how far does a blind policy get?

For every task and every candidate view (the Sawyer scene's cameras and a few free-camera poses) at each image
size, the first frames of K evaluation scenes (seeds 1_000_000 + i, as the evaluation draws them) are rendered:

- `diff`: mean over scene pairs of the number of pixels whose largest channel differs by more than `--threshold`
  (out of 255) -- how many pixels tell two scenes apart. `mad`: the mean absolute difference (/255).
- `obj`: the same with the goal markers hidden: what the objects alone show.
- `goal`: pixels that change when the goal sites are made transparent (`model.site_rgba[site, 3] = 0`), mean
  over scenes: how large the drawn goal marker is.

and without rendering, over `--pairs` pairs of scenes (A = seed i, B = seed i + 1):

- `expert`: the scripted expert in B (closed loop on Meta-World's full 39-d observation).
- `replay`: the expert's action sequence recorded in A (until success plus 10 steps, as the demonstrations are
  cut) executed open loop in B.
- `blind`: the expert acting in B on an observation whose object and goal coordinates are shifted by
  (A's initial coordinates - B's): it sees the real hand, gripper and the motion of whatever it moves, but believes
  the scene is A. `blind_mean`: the same belief for the average scene (the mean of the seeds' initial coordinates),
  the best guess of a policy that cannot see. Both are generous to the blind side (motion of objects is leaked).

`tracking` follows the expert's episodes in the `--track-views` at `--track-size` and counts, every 10 steps, the
pixels of the randomised objects and goal markers in a segmentation render: whether the target stays in frame
and is not hidden by the arm while the policy needs it.

Render time per frame (wall and process CPU) is measured in the same run, for each view and size (median over
all tasks' renders); the machine is shared, so the CPU time is the steadier number.

Command (all 50 tasks, 11 views, 3 sizes, 20 scene pairs; about 50 minutes on 2 shared AMD EPYC cores, one
process, one thread):

    OMP_NUM_THREADS=1 MUJOCO_GL=egl PYTHONPATH=src python benchmarks/check_visibility.py \\
        --out runs/visibility/visibility.json

`--parts` runs a subset (visibility, tracking, baselines), `--tasks` a task list, `--pairs 40` more scene pairs,
`--tables FILE --choose VIEW@SIZE` reprints the tables and the shortlist of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from defi.envs.metaworld import CAMERAS, FREE_CAMERAS, FreeCamera, MetaWorldEnv, resolve_tasks  # noqa: E402

EVAL_SEED = 1_000_000
# Candidate free-camera poses measured next to the model's cameras and FREE_CAMERAS ("workspace",
# "workspace_close"): all look at the region where objects and goals are placed. "side" looks along +x from the
# robot's left, so it sees the handles and buttons that face the robot; "top" looks straight down. (Views from
# behind the robot and from across the table were tried by eye and dropped: the arm covers the workspace, or the
# objects show their backs.)
CANDIDATES: dict[str, FreeCamera] = {
    "side": FreeCamera(lookat=(0.0, 0.7, 0.08), distance=1.1, azimuth=0.0, elevation=-50.0),
    "top": FreeCamera(lookat=(0.0, 0.65, 0.05), distance=1.1, azimuth=90.0, elevation=-89.9),
}
# Observation indices that describe the scene rather than the robot: objects' position/quaternion (current and
# previous frame) and the goal. Hand xyz and gripper opening (0:4 and 18:22) stay real for the blind expert.
SCENE_IDX = np.r_[4:18, 22:36, 36:39]


def goal_site_ids(env: MetaWorldEnv) -> list[int]:
    """The drawn goal markers: the sites the task moves to its targets, and a site called "goal" if drawn."""
    model = env._env.model
    names = [name for name, _ in env._env._target_site_config] + ["goal"]
    ids = []
    for name in names:
        sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)
        if sid >= 0 and sid not in ids and model.site_rgba[sid, 3] > 0:
            ids.append(sid)
    return ids


def changed(a: np.ndarray, b: np.ndarray, threshold: int) -> int:
    return int((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > threshold).sum())


def visibility(task: str, views: list[str], sizes: list[int], seeds: list[int], threshold: int,
               times: dict[str, list[tuple[float, float]]]) -> dict:
    out: dict = {}
    for size in sizes:
        env = MetaWorldEnv(task, seed=0, cameras=views, image_size=size, free_cameras=CANDIDATES)
        model = env._env.model
        sites = goal_site_ids(env)
        alpha = model.site_rgba[sites, 3].copy()
        shown: dict[str, list[np.ndarray]] = {v: [] for v in views}
        hidden: dict[str, list[np.ndarray]] = {v: [] for v in views}
        for seed in seeds:
            env.reset(seed=seed)
            for view in views:
                env.cameras = (view,)  # one view at a time, so that each is timed on its own
                t0, c0 = time.perf_counter(), time.process_time()
                shown[view].append(env.render()[view])
                # wall time, and CPU time of the whole process (llvmpipe's threads included): the machine is
                # shared, so the CPU time is the steadier measure of what a frame costs
                times[f"{view}@{size}"].append((time.perf_counter() - t0, time.process_time() - c0))
                model.site_rgba[sites, 3] = 0.0
                hidden[view].append(env.render()[view])
                model.site_rgba[sites, 3] = alpha
        env.close()
        for view in views:
            pairs = list(combinations(range(len(seeds)), 2))
            a, h = shown[view], hidden[view]
            out.setdefault(view, {})[str(size)] = {
                "diff": float(np.mean([changed(a[i], a[j], threshold) for i, j in pairs])),
                "mad": float(np.mean([np.abs(a[i].astype(np.int16) - a[j]).mean() for i, j in pairs])),
                "obj": float(np.mean([changed(h[i], h[j], threshold) for i, j in pairs])),
                "goal": float(np.mean([changed(x, y, threshold) for x, y in zip(a, h)])) if sites else 0.0,
            }
    return out


def run_expert(env: MetaWorldEnv, seed: int, offset: np.ndarray | None = None, post_success: int | None = None,
               max_steps: int = 500) -> tuple[bool, list[np.ndarray]]:
    """The expert in scene `seed`, acting on the observation + `offset`; stops `post_success` steps after success."""
    env.reset(seed=seed)
    actions, after = [], 0
    for _ in range(max_steps):
        if offset is not None:
            env._raw_obs = env._raw_obs + offset  # the next step overwrites it with the real observation
        action = env.expert_action()
        actions.append(action)
        env.step(action, render=False)
        if env.success:
            if post_success is None or after >= post_success:
                break
            after += 1
    return env.success, actions


def replay(env: MetaWorldEnv, seed: int, actions: list[np.ndarray]) -> bool:
    env.reset(seed=seed)
    for action in actions:
        env.step(action, render=False)
        if env.success:
            break
    return env.success


def scene_geoms(env: MetaWorldEnv, seeds: list[int]) -> set[int]:
    """Geoms placed differently in different scenes (the randomised objects): the robot and table are not."""
    positions = []
    for seed in seeds[:3]:
        env.reset(seed=seed)
        positions.append(env._env.data.geom_xpos.copy())
    moved = np.abs(positions[1] - positions[0]).max(axis=1) + np.abs(positions[2] - positions[0]).max(axis=1)
    return set(np.flatnonzero(moved > 1e-6).tolist())


def tracking(task: str, views: list[str], size: int, seeds: list[int], every: int = 10) -> dict:
    """Along the expert's episodes: how many pixels show the randomised objects and the goal markers.

    A segmentation render (MuJoCo's object id per pixel) counts the pixels of the geoms that move between scenes
    and of the goal sites, every `every` steps until success: an object out of frame, or hidden by the arm while
    the policy needs it, shows as few pixels.
    """
    env = MetaWorldEnv(task, seed=0, cameras=views, image_size=size, free_cameras=CANDIDATES)
    geoms, sites = scene_geoms(env, seeds), set(goal_site_ids(env))
    counts: dict[str, list[list[int]]] = {v: [] for v in views}

    def count(seg: np.ndarray) -> int:
        ids, types = seg[..., 0], seg[..., 1]
        geom = (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & np.isin(ids, list(geoms))
        site = (types == int(mujoco.mjtObj.mjOBJ_SITE)) & np.isin(ids, list(sites))
        return int((geom | site).sum())

    for seed in seeds:
        env.reset(seed=seed)
        per_view: dict[str, list[int]] = {v: [] for v in views}
        for step in range(env.max_episode_steps):
            if step % every == 0:
                env._renderer.enable_segmentation_rendering()
                for view, seg in env.render().items():
                    per_view[view].append(count(seg))
                env._renderer.disable_segmentation_rendering()
            env.step(env.expert_action(), render=False)
            if env.success:
                break
        for view in views:
            counts[view].append(per_view[view])
    env.close()
    out = {}
    for view in views:
        frames = np.concatenate([np.asarray(c) for c in counts[view]])
        out[view] = {"first": float(np.mean([c[0] for c in counts[view]])), "median": float(np.median(frames)),
                     "min": float(frames.min()), "p10": float(np.percentile(frames, 10)),
                     "frames_under_10": float(np.mean(frames < 10)), "frames": int(len(frames))}
    return out


def baselines(task: str, pairs: int) -> dict:
    env = MetaWorldEnv(task, seed=0, cameras=())
    seeds = [EVAL_SEED + i for i in range(pairs + 1)]
    init = np.stack([env.reset(seed=s)["observation.environment_state"].astype(np.float64) for s in seeds])
    again = env.reset(seed=seeds[0])["observation.environment_state"]
    assert np.array_equal(again, init[0].astype(np.float32)), "reset(seed) must redraw the same scene"
    spread = np.ptp(init[:, SCENE_IDX], axis=0)
    mean_scene = init.mean(axis=0)
    expert_ok, demos = [], []
    for s in seeds:
        ok, actions = run_expert(env, s, post_success=10)  # as the data generator cuts demonstrations
        expert_ok.append(ok)
        demos.append(actions)
    rep, blind, blind_mean = [], [], []
    for i in range(pairs):
        a, b = i, i + 1
        rep.append(replay(env, seeds[b], demos[a]))
        offset = np.zeros(init.shape[1])
        offset[SCENE_IDX] = init[a, SCENE_IDX] - init[b, SCENE_IDX]
        blind.append(run_expert(env, seeds[b], offset)[0])
        offset[SCENE_IDX] = mean_scene[SCENE_IDX] - init[b, SCENE_IDX]
        blind_mean.append(run_expert(env, seeds[b], offset)[0])
    env.close()
    pct = lambda xs: 100.0 * float(np.mean(xs))  # noqa: E731
    return {"expert": pct(expert_ok[1:]), "expert_all": pct(expert_ok), "replay": pct(rep), "blind": pct(blind),
            "blind_mean": pct(blind_mean), "demo_steps": float(np.mean([len(d) for d in demos])),
            "scene_spread_max": float(spread.max()), "pairs": pairs}


def machine() -> dict:
    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "gl": os.environ.get("MUJOCO_GL"), "python": platform.python_version(), "mujoco": mujoco.__version__,
            "load_avg_start": os.getloadavg()}


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([f"\n## {title}", fmt(header), *map(fmt, rows)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="MT50")
    p.add_argument("--views", default=",".join([*CAMERAS, *FREE_CAMERAS, *CANDIDATES]))
    p.add_argument("--sizes", default="64,96,128")
    p.add_argument("--scenes", type=int, default=8, help="K first frames per task (seed pairs: K(K-1)/2)")
    p.add_argument("--pairs", type=int, default=20, help="scene pairs for the blind baselines (0: skip them)")
    p.add_argument("--threshold", type=int, default=16)
    p.add_argument("--parts", default="visibility,tracking,baselines")
    p.add_argument("--track-views", default="corner,workspace,workspace_close,gripperPOV",
                   help="views whose object/goal pixels are counted along the expert's episodes")
    p.add_argument("--track-size", default="64")
    p.add_argument("--out", type=Path, default=Path("runs/visibility/visibility.json"))
    p.add_argument("--choose", default="workspace_close@64", help="VIEW@SIZE whose shortlist is printed")
    p.add_argument("--min-pixels", type=float, default=30.0)
    p.add_argument("--max-blind", type=float, default=20.0)
    p.add_argument("--tables", type=Path, help="print the tables of an earlier --out file and exit")
    args = p.parse_args(argv)
    if args.tables:
        report(json.loads(args.tables.read_text()), args.choose, args.min_pixels, args.max_blind)
        return
    tasks = resolve_tasks(args.tasks)
    parts = set(args.parts.split(","))
    track_views = [v.strip() for v in args.track_views.split(",") if v.strip()]
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [EVAL_SEED + i for i in range(args.scenes)]
    times: dict[str, list[tuple[float, float]]] = {f"{v}@{s}": [] for v in views for s in sizes}
    result: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                    "command": " ".join([sys.executable, *sys.argv]), "tasks": {}}
    t_start = time.perf_counter()
    for n, task in enumerate(tasks):
        t0 = time.perf_counter()
        entry = {}
        if "visibility" in parts:
            entry["visibility"] = visibility(task, views, sizes, seeds, args.threshold, times)
        if "tracking" in parts:
            track_size = int(args.track_size)
            entry["tracking"] = tracking(task, track_views, track_size, seeds)
        t1 = time.perf_counter()
        if "baselines" in parts and args.pairs:
            entry["baselines"] = baselines(task, args.pairs)
        entry["seconds"] = {"render": t1 - t0, "rollouts": time.perf_counter() - t1}
        result["tasks"][task] = entry
        b = entry.get("baselines", {})
        print(f"[{n + 1}/{len(tasks)}] {task}: {t1 - t0:.0f}s rendering, {time.perf_counter() - t1:.0f}s rollouts; "
              + " ".join(f"{k}={v:.0f}" for k, v in b.items() if k in ("expert", "replay", "blind", "blind_mean")),
              flush=True)
    result["render_ms"] = {k: {"median": 1e3 * float(np.median([w for w, _ in v])),
                               "p90": 1e3 * float(np.percentile([w for w, _ in v], 90)),
                               "cpu_median": 1e3 * float(np.median([c for _, c in v])), "n": len(v)}
                           for k, v in times.items() if v}
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["seconds_total"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['seconds_total']:.0f} s; written {args.out}")

    report(result, args.choose, args.min_pixels, args.max_blind)


def report(result: dict, choose: str, min_pixels: float, max_blind: float) -> None:
    """Print the tables of a result (a fresh one, or one read back with --tables)."""
    args = result["args"]
    tasks = result["tasks"]
    entry = next(iter(tasks.values()))
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, OMP_NUM_THREADS={m['threads']}, MUJOCO_GL={m['gl']}, "
          f"mujoco {m['mujoco']}; load average {m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}")
    if "visibility" in entry:
        views = list(entry["visibility"])
        sizes = list(entry["visibility"][views[0]])
        ms = result["render_ms"]
        cpu = lambda k: f" / {ms[k]['cpu_median']:.1f}" if "cpu_median" in ms[k] else ""  # noqa: E731
        print(table("render ms/frame: wall median (p90) / process CPU median, over tasks and scenes",
                    ["view", *sizes], [[v, *(f"{ms[f'{v}@{s}']['median']:.1f} ({ms[f'{v}@{s}']['p90']:.1f})"
                                             f"{cpu(f'{v}@{s}')}" for s in sizes)] for v in views]))
        for size in sizes:
            rows = [[t, *(f"{round(e['visibility'][v][size]['diff'])}/{round(e['visibility'][v][size]['goal'])}"
                          for v in views)] for t, e in tasks.items()]
            print(table(f"{size}x{size}: pixels differing between scenes / goal-marker pixels (threshold "
                        f"{args['threshold']}/255, {args['scenes']} scenes)", ["task", *views], rows))
    if "tracking" in entry:
        views = list(entry["tracking"])
        rows = [[t, *(f"{e['tracking'][v]['first']:.0f}/{e['tracking'][v]['median']:.0f}/"
                      f"{e['tracking'][v]['p10']:.0f}/{100 * e['tracking'][v]['frames_under_10']:.0f}%"
                      for v in views)] for t, e in tasks.items()]
        print(table(f"{args['track_size']}x{args['track_size']}, along the expert's episodes (every 10 steps): "
                    "pixels of the randomised objects and goal markers, first frame / median / 10th percentile / "
                    "% of frames with < 10", ["task", *views], rows))
    if "baselines" not in entry:
        return
    keys = ["expert", "replay", "blind", "blind_mean", "demo_steps"]
    rows = [[t, *(f"{e['baselines'][k]:.0f}" for k in keys)] for t, e in tasks.items()]
    print(table(f"success % over {args['pairs']} scene pairs (blind = expert told another scene; blind_mean = "
                f"told the average scene; replay = another scene's demo, open loop)", ["task", *keys], rows))
    if "visibility" not in entry:
        return
    # The shortlist for one view: positions visible (objects and goal together differ on >= min_pixels pixels),
    # every blind baseline <= max_blind %, and the expert reliable.
    view, size = choose.split("@")
    rows = []
    for t, e in tasks.items():
        v, b = e["visibility"][view][size], e["baselines"]
        blind = max(b["replay"], b["blind"], b["blind_mean"])
        ok = v["diff"] >= min_pixels and blind <= max_blind and b["expert"] >= 95
        rows.append((not ok, blind, t, [t, f"{v['diff']:.0f}", f"{v['obj']:.0f}", f"{v['goal']:.0f}",
                                        f"{b['expert']:.0f}", f"{blind:.0f}", "yes" if ok else ""]))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    print(table(f"shortlist for {view} at {size}x{size}: differing pixels >= {min_pixels:.0f}, blind <= "
                f"{max_blind:.0f}%, expert >= 95%", ["task", "diff", "obj", "goal", "expert", "max blind", "ok"],
                [r[3] for r in rows]))


if __name__ == "__main__":
    main()
