"""`defi demo`: the whole DeFI pipeline in one command, on the embedded Meta-World benchmark, on a CPU.

Stages (each a directory under `run_dir`; a finished stage is recorded in `stages.json` and reused when the
command is run again, an interrupted training stage continues from its latest checkpoint):

1. `corpus`   action-free pretraining videos: Meta-World experts on many tasks, actions and states dropped
2. `demos`    a few action-labeled demonstrations per finetuning task (other seeds than the corpus)
3. `gfdm`     pretrain the General Forward Dynamics Model on the corpus (paper §3.1)
4. `gidm`     pretrain the General Inverse Dynamics Model on the corpus (§3.2); scored on the demos
5. `compare`  finetune DeFI and both baselines on the demos and evaluate them in closed loop (§3.3)
6. `latency`  per-component inference latency of the finetuned policy (paper Table 13)
7. `latents`  the GIDM's latent actions on the demos, projected to 2-D, with the true end-effector motion
8. `report`   report.html / report.md / report.json in `run_dir`

Presets: `tiny` (seconds; tests), `quick` (<= 10 min on a 2-core CPU; a smoke test of everything) and
`full` (<= 45 min; the figures the README quotes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi.config import Config, parse_cli, replace, save_config
from defi.data.sources.metaworld import MetaWorldGenConfig
from defi.eval.compare import Variant
from defi.eval.metaworld_eval import EvalConfig
from defi.train.finetune import FinetuneConfig
from defi.train.finetune import preset_small as finetune_small
from defi.train.finetune import preset_tiny as finetune_tiny
from defi.train.pretrain_fdm import PretrainFDMConfig
from defi.train.pretrain_fdm import preset_small as fdm_small
from defi.train.pretrain_fdm import preset_tiny as fdm_tiny
from defi.train.pretrain_idm import PretrainIDMConfig
from defi.train.pretrain_idm import preset_small as idm_small
from defi.train.pretrain_idm import preset_tiny as idm_tiny

STAGES = ("corpus", "demos", "gfdm", "gidm", "compare", "latency", "latents", "report")


@dataclass
class DemoConfig(Config):
    run_dir: Path = Path("runs/demo")
    seed: int = 0
    """One seed for the whole run: data generation, every training stage, evaluation."""
    corpus: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Action-free pretraining videos (`out` and `action_free` are set by the demo)."""
    demos: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Labeled demonstrations of the finetuning tasks (`out` is set by the demo; tasks = finetune.eval.tasks)."""
    fdm: PretrainFDMConfig = field(default_factory=fdm_small)
    idm: PretrainIDMConfig = field(default_factory=idm_small)
    finetune: FinetuneConfig = field(default_factory=finetune_small)
    variants: tuple[Variant, ...] = ("defi", "defi-scratch", "image_dp")
    latency_repeats: int = 20
    latent_clips: int = 1200
    """Demo clips whose latent actions are drawn in the latent-action picture."""

    def validate(self) -> None:
        self.check(self.latency_repeats >= 1, "latency_repeats", ">= 1")
        self.check(self.latent_clips >= 8, "latent_clips", ">= 8")
        self.check("defi" in self.variants, "variants", "a list that includes 'defi'")


def resolve(cfg: DemoConfig) -> DemoConfig:
    """Point every stage at its directory under run_dir and thread the one seed through them."""
    root = Path(cfg.run_dir)
    corpus_dir, demos_dir = root / "data" / "corpus", root / "data" / "demos"
    tasks = ",".join(cfg.finetune.eval.tasks)
    corpus = replace(cfg.corpus, out=corpus_dir, action_free=True, seed=cfg.seed, cameras=("corner",))
    # demo episodes use other position seeds than the corpus; evaluation uses yet others (EVAL_SEED_OFFSET)
    demos = replace(cfg.demos, out=demos_dir, action_free=False, seed=cfg.seed + 1000, tasks=tasks,
                    cameras=("corner",))
    fdm = replace(cfg.fdm, run_dir=root / "gfdm",
                  data=replace(cfg.fdm.data, sources=[(str(corpus_dir), 1.0)], seed=cfg.seed),
                  trainer=replace(cfg.fdm.trainer, seed=cfg.seed))
    idm = replace(cfg.idm, run_dir=root / "gidm",
                  data=replace(cfg.idm.data, sources=[(str(corpus_dir), 1.0)], seed=cfg.seed),
                  trainer=replace(cfg.idm.trainer, seed=cfg.seed))
    finetune = replace(cfg.finetune, data=replace(cfg.finetune.data, sources=[(str(demos_dir), 1.0)], seed=cfg.seed),
                       trainer=replace(cfg.finetune.trainer, seed=cfg.seed),
                       eval=replace(cfg.finetune.eval, seed=cfg.seed))
    return replace(cfg, corpus=corpus, demos=demos, fdm=fdm, idm=idm, finetune=finetune)


# ------------------------------------------------------------------------------------------------ stage log
class StageLog:
    """`stages.json`: which stages finished, when, and how long they took (written atomically)."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, name: str) -> bool:
        return self.stages.get(name, {}).get("status") == "done"

    def record(self, name: str, wall_s: float, summary: dict[str, Any]) -> None:
        self.stages[name] = {"status": "done", "wall_s": round(wall_s, 1),
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stages, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def invalidate_after(self, name: str) -> None:
        """A stage that is redone makes every later stage stale."""
        later = STAGES[STAGES.index(name) + 1 :]
        for stage in later:
            self.stages.pop(stage, None)


# ------------------------------------------------------------------------------------------------ stages
def _has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("step_*"))


def _generate(gen: MetaWorldGenConfig) -> dict[str, Any]:
    from defi.data.sources.metaworld import generate_metaworld

    return _store_summary(gen.out, generate_metaworld(gen))


def stage_corpus(cfg: DemoConfig) -> dict[str, Any]:
    return _generate(cfg.corpus)


def stage_demos(cfg: DemoConfig) -> dict[str, Any]:
    return _generate(cfg.demos)


def _store_summary(path: Path, report: Any) -> dict[str, Any]:
    from defi.data.store import EpisodeStore

    store = EpisodeStore.open(path)
    tasks = sorted({str(r.get("task", "")) for r in store.episodes})
    return {"episodes": len(store.episodes), "frames": store.num_frames, "tasks": tasks,
            "fps": float(store.info.fps), "failed_expert_attempts": report.failed_attempts,
            "generation_frames_per_s": round(report.frames_per_s, 1), "disk_mib": round(store.disk_bytes() / 2**20, 1)}


def stage_gfdm(cfg: DemoConfig) -> dict[str, Any]:
    from defi.data.config import build_clip_dataset
    from defi.train.pretrain_fdm import run_pretrain_fdm

    train, held_out = build_clip_dataset(cfg.fdm.data, "train"), build_clip_dataset(cfg.fdm.data, "val")
    metrics = run_pretrain_fdm(cfg.fdm, train, held_out, resume=_has_checkpoint(cfg.fdm.run_dir))
    held = metrics["held_out"]
    return {k: held[k] for k in ("model_mse", "one_step_mse", "copy_mse", "mse_ratio_model_over_copy",
                                 "mse_ratio_one_step_over_copy") if k in held}


def demo_clips_for_idm(cfg: DemoConfig, split: str = "all"):
    """The labeled demos as the GIDM sees clips (its cameras, interval and action chunk). "train" and "val" are
    two halves of the episodes drawn by a seeded permutation, so both hold every task."""
    from defi.data.config import build_clip_dataset

    data = replace(cfg.idm.data, sources=[(str(cfg.demos.out), 1.0)], val_fraction=0.5)
    return build_clip_dataset(data, split)


def stage_gidm(cfg: DemoConfig) -> dict[str, Any]:
    from defi.train.pretrain_idm import pretrain_idm

    # pretrained on action-free corpus clips only; held-out scoring (prediction MSE, linear probe of the true
    # actions, split by episode) on the labeled demos, which the GIDM never trains on
    # (the probe is fitted on half of the demo episodes and scored on the other half)
    idm = replace(cfg.idm, resume=_has_checkpoint(cfg.idm.run_dir))
    metrics = pretrain_idm(idm, eval_dataset=demo_clips_for_idm(cfg, "val"),
                           probe_dataset=demo_clips_for_idm(cfg, "train"))
    keys = ("eval/mse_over_copy", "eval/codes_used_fraction", "eval/code_perplexity", "eval/probe_r2_latent_action",
            "eval/probe_r2_feature_diff")
    return {k.removeprefix("eval/"): metrics[k] for k in keys if k in metrics}


def compare_config(cfg: DemoConfig, variants: tuple[str, ...] | None = None):
    from defi.eval.compare import CompareConfig

    return CompareConfig(run_dir=Path(cfg.run_dir) / "compare", fdm=str(cfg.fdm.run_dir), idm=str(cfg.idm.run_dir),
                         variants=tuple(variants or cfg.variants), finetune=cfg.finetune)


def stage_compare(cfg: DemoConfig) -> dict[str, Any]:
    from defi.eval.compare import compare

    results = compare(compare_config(cfg))
    return {v: {"pc_success": r["overall"]["pc_success"], "ci95": [r["overall"]["ci95_low"], r["overall"]["ci95_high"]]}
            for v, r in results.items()}


def stage_latency(cfg: DemoConfig) -> dict[str, Any]:
    import torch

    from defi.eval.latency import policy_latency
    from defi.policies import load_policy

    policy = load_policy(Path(cfg.run_dir) / "compare" / "defi" / "model")
    threads = torch.get_num_threads()
    out = {"all_threads": policy_latency(policy, cfg.latency_repeats)}
    try:  # one thread: what each evaluation worker process gets
        torch.set_num_threads(1)
        out["one_thread"] = policy_latency(policy, cfg.latency_repeats)
    finally:
        torch.set_num_threads(threads)
    path = Path(cfg.run_dir) / "latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return {k: round(v["whole_ms"], 1) for k, v in out.items()}


def stage_latents(cfg: DemoConfig) -> dict[str, Any]:
    from defi.demo.latents import latent_action_picture

    return latent_action_picture(cfg, Path(cfg.run_dir) / "assets" / "latent_actions.png")


def stage_report(cfg: DemoConfig) -> dict[str, Any]:
    from defi.demo.report import write_report

    paths = write_report(Path(cfg.run_dir))
    return {k: str(v) for k, v in paths.items()}


STAGE_FUNCTIONS: dict[str, Callable[[DemoConfig], dict[str, Any]]] = {
    "corpus": stage_corpus, "demos": stage_demos, "gfdm": stage_gfdm, "gidm": stage_gidm,
    "compare": stage_compare, "latency": stage_latency, "latents": stage_latents, "report": stage_report,
}


def run_demo(cfg: DemoConfig, redo: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every stage that has not finished yet; `redo` names stages to run again (and everything after)."""
    from defi.config import validate_config
    from defi.errors import DefiError

    validate_config(cfg)
    for name in redo:
        if name not in STAGES:
            raise DefiError(f"--redo {name}: expected one of {', '.join(STAGES)}")
    cfg = resolve(cfg)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, root / "config.json")
    save_config(cfg, root / "config.json")
    log = StageLog(root / "stages.json")
    for name in redo:
        log.stages.pop(name, None)
        log.invalidate_after(name)
    total = time.perf_counter()
    for name in STAGES:
        if log.done(name) and name != "report":
            print(f"== [{name}] done earlier ({log.stages[name]['wall_s']:.0f} s): reused")
            continue
        print(f"== [{name}] {STAGE_DOC[name]}", flush=True)
        start = time.perf_counter()
        summary = STAGE_FUNCTIONS[name](cfg)
        log.record(name, time.perf_counter() - start, summary)
        print(f"== [{name}] finished in {time.perf_counter() - start:.0f} s: {json.dumps(summary, default=str)}")
    print(f"== demo finished in {time.perf_counter() - total:.0f} s (this invocation); report: {root / 'report.html'}")
    return log.stages


STAGE_DOC = {
    "corpus": "generating the action-free pretraining corpus",
    "demos": "generating the labeled demonstrations",
    "gfdm": "pretraining the forward dynamics model (GFDM)",
    "gidm": "pretraining the inverse dynamics model (GIDM)",
    "compare": "finetuning and evaluating DeFI and the baselines",
    "latency": "timing the policy's components",
    "latents": "drawing the latent actions",
    "report": "writing report.html / report.md / report.json",
}


def changed_settings(cfg: Config, path: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Top-level fields of `cfg` that differ from the config saved at `path` ([] when there is none)."""
    from defi.config import to_dict

    if not path.is_file():
        return []
    skip = {"_type", *ignore}
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in skip}
    new = {k: v for k, v in json.loads(json.dumps(to_dict(cfg), default=str)).items() if k not in skip}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _check_same_config(cfg: DemoConfig, path: Path) -> None:
    """Reusing finished stages is only honest when they were made with the same settings."""
    from defi.errors import ConfigError

    changed = changed_settings(cfg, path, ignore=("latency_repeats",))
    if changed:
        raise ConfigError(f"{path}: this run directory was made with other settings (differs in: "
                          f"{', '.join(changed)}); use a new --run-dir, or delete the directory to start over")


# ------------------------------------------------------------------------------------------------ presets
def preset_tiny() -> DemoConfig:
    """Seconds, for tests: 2 tasks, 32x32 frames, a handful of steps per stage."""
    ft = finetune_tiny()
    ft = replace(ft, data=replace(ft.data, val_fraction=0.25),
                 eval=replace(ft.eval, tasks=("reach-v3", "button-press-v3"), max_episode_steps=20))
    idm = idm_tiny()
    idm = replace(idm, data=replace(idm.data, cameras=("corner",), image_size=32))
    return DemoConfig(
        run_dir=Path("runs/demo-tiny"),
        corpus=MetaWorldGenConfig(tasks="reach,button-press,drawer-close", episodes_per_task=2, image_size=32,
                                  max_steps=150, workers=1, progress=False),
        demos=MetaWorldGenConfig(episodes_per_task=2, image_size=32, max_steps=150, workers=1, progress=False),
        fdm=fdm_tiny(), idm=idm, finetune=ft, latency_repeats=2, latent_clips=32,
    )


# Finetuning / evaluation tasks of the CPU presets: four MT10 tasks on which 10 demonstrations give a policy a
# chance in a few minutes of CPU training (push, pick-place, peg-insert need far more)
DEMO_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "window-open-v3")
CORPUS_TASKS_FULL = ("MT10", "button-press", "door-close", "drawer-open", "faucet-open", "faucet-close",
                     "handle-press", "plate-slide", "coffee-button", "window-close", "reach-wall")


def _small_stages(fdm_steps: int, idm_steps: int, ft_steps: int, eval_tasks: tuple[str, ...], episodes: int,
                  max_episode_steps: int = 500) -> tuple[PretrainFDMConfig, PretrainIDMConfig, FinetuneConfig]:
    fdm = fdm_small()
    fdm = replace(fdm, trainer=replace(fdm.trainer, max_steps=fdm_steps, checkpoint_every=max(50, fdm_steps // 4),
                                       eval_every=fdm_steps),
                  eval=replace(fdm.eval, clips=16))
    idm = idm_small()
    idm = replace(idm, trainer=replace(idm.trainer, max_steps=idm_steps, checkpoint_every=max(50, idm_steps // 2),
                                       eval_every=idm_steps),
                  eval=replace(idm.eval, max_clips=1024))
    ft = finetune_small()
    # the whole 8-step chunk (0.1 s at Meta-World's 80 Hz) is executed before replanning: half the policy calls of
    # executing 4, which is what makes 3 policies x 40 episodes fit the CPU budget
    ft = replace(ft, data=replace(ft.data, val_fraction=0.1),
                 trainer=replace(ft.trainer, max_steps=ft_steps, batch_size=16, warmup_steps=min(50, ft_steps // 5),
                                 ema_decay=0.99, checkpoint_every=max(50, ft_steps // 3), eval_every=0),
                 eval=EvalConfig(tasks=eval_tasks, episodes_per_task=episodes, max_episode_steps=max_episode_steps,
                                 execute_steps=8, num_workers=2, video_episodes=1))
    return fdm, idm, ft


def preset_quick() -> DemoConfig:
    """<= 10 minutes on a 2-core CPU: every stage runs, the numbers are only a smoke test."""
    fdm, idm, ft = _small_stages(fdm_steps=120, idm_steps=150, ft_steps=120, eval_tasks=DEMO_TASKS[:2], episodes=3,
                                 max_episode_steps=150)
    return DemoConfig(
        run_dir=Path("runs/demo-quick"),
        corpus=MetaWorldGenConfig(tasks="reach,button-press-topdown,drawer-close,window-open,door-close,button-press",
                                  episodes_per_task=3, image_size=64, progress=True),
        demos=MetaWorldGenConfig(episodes_per_task=5, image_size=64, progress=True),
        fdm=fdm, idm=idm, finetune=ft, latency_repeats=10, latent_clips=400,
    )


def preset_full() -> DemoConfig:
    """<= 45 minutes on a 2-core CPU: the demo's real figures."""
    fdm, idm, ft = _small_stages(fdm_steps=800, idm_steps=1000, ft_steps=600, eval_tasks=DEMO_TASKS, episodes=10)
    return DemoConfig(
        run_dir=Path("runs/demo"),
        corpus=MetaWorldGenConfig(tasks=",".join(CORPUS_TASKS_FULL), episodes_per_task=6, image_size=64),
        demos=MetaWorldGenConfig(episodes_per_task=10, image_size=64),
        fdm=fdm, idm=idm, finetune=ft,
    )


PRESETS = {"tiny": preset_tiny, "quick": preset_quick, "full": preset_full}


def demo_main(argv: list[str]) -> int:
    argv = list(argv)
    redo: list[str] = []
    while "--redo" in argv:
        i = argv.index("--redo")
        redo.append(argv[i + 1] if i + 1 < len(argv) else "")
        del argv[i : i + 2]
    if not any(a.startswith("--preset") for a in argv):
        argv = ["--preset", "full", *argv]
    cfg = parse_cli(DemoConfig, argv, PRESETS, prog="defi demo",
                    description="The whole DeFI pipeline (data, GFDM and GIDM pretraining, finetuning, evaluation "
                                "against two baselines, report) in one command. Re-running resumes; "
                                "--redo STAGE runs a stage (and all later ones) again. Stages: " + ", ".join(STAGES))
    run_demo(cfg, tuple(redo))
    return 0
