"""Meta-World v3's evaluation protocol for any policy (closed-loop episodes by `defi.eval.rollout`).

For each task, `episodes_per_task` seeded episodes on object/goal positions drawn from seeds that the data
generator does not use (`seed_offset`), up to the benchmark's max episode length. The policy returns an action
chunk; the first `execute_steps` actions are executed before it is asked again (receding horizon). An episode
succeeds when Meta-World's success flag is ever 1. `batch_size` episodes run in lockstep with one batched policy
call per step; each episode seeds the policy's sampling noise with its own seed, so results do not depend on the
batching and a rerun repeats them.

Vision-reliance check (`vision_check`): the same episodes are run a second time with every camera image replaced,
for the whole episode, by the first frame of another episode's scene of the same task (other object and goal
positions; the proprio state stays real). A policy that uses its camera loses success there; the difference,
with a paired bootstrap interval, is reported next to the success rate.

Outputs in `out_dir`: `metrics.json` (per task and overall success, LeRobot-style `pc_success`, Wilson 95%
intervals, the vision check, per-episode results) and `videos/<task>_ep<k>.mp4` for the first `video_episodes`
episodes of each task; when the policy can show what it imagines (an `imagined_frames()` method returning uint8
[F, h, w, 3]), the imagined future is drawn beside the camera view.

Environments can also run in worker processes (`num_workers > 1`, each with its own batch); each worker loads the
policy from its saved directory, since a policy object cannot be shared between processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from defi.config import Config, preset, to_dict
from defi.eval.rollout import EpisodeResult, EpisodeSpec, run_episodes
from defi.eval.stats import paired_difference, pct, points, summarise

# The data generator seeds episodes from small integers; evaluation draws positions from far away so that the
# evaluated scenes are not the training scenes.
EVAL_SEED_OFFSET = 1_000_000

@dataclass
class EvalConfig(Config):
    tasks: tuple[str, ...] = ("reach-v3", "push-v3", "drawer-close-v3", "button-press-topdown-v3")
    episodes_per_task: int = 10
    seed: int = 0
    seed_offset: int = EVAL_SEED_OFFSET
    cameras: tuple[str, ...] = ("corner",)
    image_size: int = 64
    max_episode_steps: int = 500  # Meta-World's max_path_length
    execute_steps: int = 4  # actions executed from each predicted chunk before re-planning
    instructions: Literal["train", "held_out"] = "train"
    batch_size: int = 20
    """Episodes run in lockstep in one process, with one batched policy call per step (1: one at a time). 20:
    DeFI `small`'s step costs 55 / 24 / 19 / 17 ms per environment at batch 1 / 4 / 10 / 20 on a 2-core AVX2
    CPU (`benchmarks/bench_eval.py --breakdown`, README)."""
    num_workers: int = 1
    """Processes, each running its share of the tasks with its own batch (the policy is loaded in each)."""
    vision_check: bool = False
    """Also run every episode with another scene's first frame in place of the camera (see the module doc)."""
    video_episodes: int = 1
    video_fps: int = 40

    def validate(self) -> None:
        self.check(len(self.tasks) >= 1, "tasks", "at least one task")
        self.check(self.episodes_per_task >= 1, "episodes_per_task", "at least 1")
        self.check(self.max_episode_steps >= 1, "max_episode_steps", "at least 1")
        self.check(self.execute_steps >= 1, "execute_steps", "at least 1")
        self.check(self.num_workers >= 1, "num_workers", "at least 1")
        self.check(self.batch_size >= 1, "batch_size", "at least 1")
        self.check(self.video_episodes >= 0, "video_episodes", ">= 0")
        self.check(self.image_size >= 8, "image_size", "at least 8 pixels")

def _instruction_for(task: str, split: str, episode: int) -> str:
    from defi.data.instructions import instruction, paraphrases

    if split == "held_out":
        held = paraphrases(task, held_out=True)
        return held[episode % len(held)]
    return instruction(task)


def episode_seed(cfg: EvalConfig, episode: int) -> int:
    return cfg.seed_offset + cfg.seed * 10_000 + episode


def _specs(tasks: Sequence[str], cfg: EvalConfig, out_dir: Path) -> list[EpisodeSpec]:
    """The episodes of `tasks`, task by task; with the vision check each is followed by its wrong-scene twin."""
    from defi.envs.metaworld import MetaWorldEnv

    specs = []
    for task in tasks:
        wrong: dict[int, dict[str, np.ndarray]] = {}
        if cfg.vision_check:
            # the first frame of the next episode's scene (another seed: other object and goal positions)
            with MetaWorldEnv(task, seed=cfg.seed, cameras=cfg.cameras, image_size=cfg.image_size) as env:
                for ep in range(cfg.episodes_per_task):
                    other = episode_seed(cfg, (ep + 1) % cfg.episodes_per_task if cfg.episodes_per_task > 1
                                         else cfg.episodes_per_task)
                    obs = env.reset(seed=other)
                    wrong[ep] = {k: v for k, v in obs.items() if k.startswith("observation.images.")}
        for ep in range(cfg.episodes_per_task):
            seed, instruction = episode_seed(cfg, ep), _instruction_for(task, cfg.instructions, ep)
            video = out_dir / "videos" / f"{task}_ep{ep}.mp4" if ep < cfg.video_episodes else None
            specs.append(EpisodeSpec(task, ep, seed, instruction, video_path=video))
            if cfg.vision_check:
                specs.append(EpisodeSpec(task, ep, seed, instruction, mode="wrong_scene", image_override=wrong[ep]))
    return specs


def _evaluate_tasks(policy: Any, tasks: Sequence[str], cfg: EvalConfig, out_dir: Path,
                    progress: bool = True) -> list[EpisodeResult]:
    from functools import partial

    from tqdm.auto import tqdm

    from defi.envs.metaworld import MetaWorldEnv

    specs = _specs(tasks, cfg, out_dir)
    bar = tqdm(total=len(specs), desc="eval", disable=not progress, dynamic_ncols=True)
    wins: dict[str, list[int]] = {}

    def on_result(r: EpisodeResult) -> None:
        if r.mode == "real":
            wins.setdefault(r.task, []).append(int(r.success))
            bar.set_postfix(task=r.task, success=f"{sum(wins[r.task])}/{len(wins[r.task])}")
        bar.update(1)

    make_env = partial(MetaWorldEnv, seed=cfg.seed, cameras=cfg.cameras, image_size=cfg.image_size,
                       max_episode_steps=cfg.max_episode_steps)
    try:
        return run_episodes(policy, make_env, specs, cfg.execute_steps, cfg.batch_size, cfg.video_fps, on_result)
    finally:
        bar.close()


def _worker(args: tuple[str, list[str], dict, str]) -> list[dict]:
    policy_dir, tasks, cfg_dict, out_dir = args
    import torch

    from defi.config import from_dict
    from defi.policies import load_policy

    torch.set_num_threads(1)
    policy = load_policy(policy_dir)
    cfg = from_dict(EvalConfig, cfg_dict)
    return [r.__dict__ for r in _evaluate_tasks(policy, tasks, cfg, Path(out_dir), progress=False)]


def _summaries(results: Sequence[EpisodeResult], tasks: Sequence[str]) -> dict[str, Any]:
    per_task = {t: summarise([r.success for r in results if r.task == t]) for t in tasks}
    overall = summarise([r.success for r in results])
    overall["mean_task_success_rate"] = float(np.mean([v["success_rate"] for v in per_task.values()]))
    return {"overall": overall, "per_task": per_task}


def vision_check_summary(results: Sequence[EpisodeResult], tasks: Sequence[str]) -> dict[str, Any]:
    """Success with the real camera vs with another scene's image, paired by episode: the difference (points) with
    a bootstrap 95% interval (episodes resampled within each task)."""
    real = {(r.task, r.episode): r.success for r in results if r.mode == "real"}
    wrong = {(r.task, r.episode): r.success for r in results if r.mode == "wrong_scene"}
    keys = sorted(real.keys() & wrong.keys())
    out = {"wrong_scene": _summaries([r for r in results if r.mode == "wrong_scene"], tasks)}
    diff = paired_difference([real[k] for k in keys], [wrong[k] for k in keys], strata=[k[0] for k in keys])
    out["difference"] = diff
    out["per_task_difference"] = {
        t: paired_difference([real[k] for k in keys if k[0] == t], [wrong[k] for k in keys if k[0] == t])
        for t in tasks}
    return out


def evaluate(policy: Any | None, cfg: EvalConfig, out_dir: str | Path, policy_dir: str | Path | None = None,
             label: str = "policy") -> dict[str, Any]:
    """Evaluate `policy` (in this process) or the saved policy at `policy_dir` (in `num_workers` processes)."""
    from defi.envs.metaworld import resolve_tasks

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = resolve_tasks(list(cfg.tasks))
    start = time.perf_counter()
    if cfg.num_workers > 1 and policy_dir is not None:
        import multiprocessing as mp

        groups = [tasks[i:: cfg.num_workers] for i in range(cfg.num_workers) if tasks[i:: cfg.num_workers]]
        with mp.get_context("spawn").Pool(len(groups)) as pool:
            chunks = pool.map(_worker, [(str(policy_dir), g, to_dict(cfg), str(out_dir)) for g in groups])
        results = [EpisodeResult(**r) for chunk in chunks for r in chunk]
    else:
        if policy is None:
            from defi.policies import load_policy

            policy = load_policy(policy_dir)
        results = _evaluate_tasks(policy, tasks, cfg, out_dir)
    real = [r for r in results if r.mode == "real"]
    metrics: dict[str, Any] = {
        "label": label,
        **_summaries(real, tasks),
        "policy_ms_per_call": float(np.mean([r.policy_ms for r in real])),
        "wall_time_s": time.perf_counter() - start,
        "episodes_per_min": 60 * len(results) / max(time.perf_counter() - start, 1e-9),
        "config": to_dict(cfg),
        "episodes": [r.__dict__ for r in results],
    }
    if cfg.vision_check:
        metrics["vision_check"] = vision_check_summary(results, tasks)
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    return metrics


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """A per-task success table, one column per evaluated policy: `rows` maps label -> evaluate() output."""
    labels = list(rows)
    tasks = list(next(iter(rows.values()))["per_task"]) if rows else []
    head = "| task | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (len(labels) + 1)]

    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(pct(rows[lab]["per_task"][task]) for lab in labels) + " |")
    lines.append("| **all** | " + " | ".join(pct(rows[lab]["overall"]) for lab in labels) + " |")
    if all(rows[lab].get("vision_check") for lab in labels):
        lines.append("| with another scene's image | " + " | ".join(
            pct(rows[lab]["vision_check"]["wrong_scene"]["overall"]) for lab in labels) + " |")
        lines.append("| **vision reliance** (real - wrong scene) | " + " | ".join(
            points(rows[lab]["vision_check"]["difference"]) for lab in labels) + " |")
    return "\n".join(lines)


@dataclass
class EvalRunConfig(Config):
    """`defi eval`: closed-loop Meta-World evaluation of a saved policy."""

    policy: Path = Path("runs/finetune/model")
    """A saved policy directory (or a run directory holding model/)."""
    out_dir: Path = Path("runs/eval")
    eval: EvalConfig = field(default_factory=EvalConfig)


@preset(EvalRunConfig, "small")
def _small() -> EvalRunConfig:
    return EvalRunConfig()


@preset(EvalRunConfig, "mt10")
def _mt10() -> EvalRunConfig:
    return EvalRunConfig(eval=EvalConfig(tasks=("MT10",), episodes_per_task=10))


def run(cfg: EvalRunConfig) -> dict[str, Any]:
    """Evaluate the saved policy; prints the success table."""
    metrics = evaluate(None, cfg.eval, cfg.out_dir, policy_dir=cfg.policy, label=str(cfg.policy))
    print(format_table({str(cfg.policy): metrics}))
    print(f"wrote {cfg.out_dir / 'metrics.json'}")
    return metrics
