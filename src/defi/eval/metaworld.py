"""Meta-World v3's evaluation protocol for any policy (closed-loop episodes by `defi.eval.rollout`).

For each task, `episodes_per_task` seeded episodes on object/goal positions drawn from seeds that the data
generator does not use (`seed_offset`), up to the benchmark's max episode length. The policy returns an action
chunk; the first `execute_steps` actions are executed before it is asked again (receding horizon). An episode
succeeds when Meta-World's success flag is ever 1.

Outputs in `out_dir`: `metrics.json` (per task and overall success, LeRobot-style `pc_success`, Wilson 95%
intervals, per-episode results) and `videos/<task>_ep<k>.mp4` for the first `video_episodes` episodes of each
task; when the policy can show what it imagines (a `imagined_frames()` method returning uint8 [F, h, w, 3]),
the imagined future is drawn beside the camera view.

Environments run in worker processes when `num_workers > 1`; each worker loads the policy from its saved
directory, since a policy object cannot be shared between processes.
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
from defi.eval.rollout import EpisodeResult, run_episode
from defi.eval.stats import summarise

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
    num_workers: int = 1
    video_episodes: int = 1
    video_fps: int = 40

    def validate(self) -> None:
        self.check(len(self.tasks) >= 1, "tasks", "at least one task")
        self.check(self.episodes_per_task >= 1, "episodes_per_task", "at least 1")
        self.check(self.max_episode_steps >= 1, "max_episode_steps", "at least 1")
        self.check(self.execute_steps >= 1, "execute_steps", "at least 1")
        self.check(self.num_workers >= 1, "num_workers", "at least 1")
        self.check(self.video_episodes >= 0, "video_episodes", ">= 0")
        self.check(self.image_size >= 8, "image_size", "at least 8 pixels")

def _instruction_for(task: str, split: str, episode: int) -> str:
    from defi.data.instructions import instruction, paraphrases

    if split == "held_out":
        held = paraphrases(task, held_out=True)
        return held[episode % len(held)]
    return instruction(task)


def _evaluate_tasks(policy: Any, tasks: Sequence[str], cfg: EvalConfig, out_dir: Path,
                    progress: bool = True) -> list[EpisodeResult]:
    from tqdm.auto import tqdm

    from defi.envs.metaworld import MetaWorldEnv

    results = []
    bar = tqdm(total=len(tasks) * cfg.episodes_per_task, desc="eval", disable=not progress, dynamic_ncols=True)
    for task in tasks:
        env = MetaWorldEnv(task, seed=cfg.seed, cameras=cfg.cameras, image_size=cfg.image_size,
                           max_episode_steps=cfg.max_episode_steps)
        try:
            for ep in range(cfg.episodes_per_task):
                seed = cfg.seed_offset + cfg.seed * 10_000 + ep
                video = out_dir / "videos" / f"{task}_ep{ep}.mp4" if ep < cfg.video_episodes else None
                instruction = _instruction_for(task, cfg.instructions, ep)
                results.append(run_episode(policy, env, task, ep, seed, instruction, cfg.execute_steps, video,
                                           cfg.video_fps))
                done = sum(r.success for r in results if r.task == task)
                bar.set_postfix(task=task, success=f"{done}/{ep + 1}")
                bar.update(1)
        finally:
            env.close()
    bar.close()
    return results

def _worker(args: tuple[str, list[str], dict, str]) -> list[dict]:
    policy_dir, tasks, cfg_dict, out_dir = args
    import torch

    from defi.config import from_dict
    from defi.policies import load_policy

    torch.set_num_threads(1)
    policy = load_policy(policy_dir)
    cfg = from_dict(EvalConfig, cfg_dict)
    return [r.__dict__ for r in _evaluate_tasks(policy, tasks, cfg, Path(out_dir), progress=False)]

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
    per_task = {t: summarise([r.success for r in results if r.task == t]) for t in tasks}
    overall = summarise([r.success for r in results])
    overall["mean_task_success_rate"] = float(np.mean([v["success_rate"] for v in per_task.values()]))
    metrics = {
        "label": label,
        "overall": overall,
        "per_task": per_task,
        "policy_ms_per_call": float(np.mean([r.policy_ms for r in results])),
        "wall_time_s": time.perf_counter() - start,
        "config": to_dict(cfg),
        "episodes": [r.__dict__ for r in results],
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    return metrics

def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """A per-task success table, one column per evaluated policy: `rows` maps label -> evaluate() output."""
    labels = list(rows)
    tasks = list(next(iter(rows.values()))["per_task"]) if rows else []
    head = "| task | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (len(labels) + 1)]

    def cell(s: dict) -> str:
        return f"{100 * s['success_rate']:.0f}% [{100 * s['ci95_low']:.0f}, {100 * s['ci95_high']:.0f}]"

    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(cell(rows[l]["per_task"][task]) for l in labels) + " |")
    lines.append("| **all** | " + " | ".join(cell(rows[l]["overall"]) for l in labels) + " |")
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
