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
from pathlib import Path
from typing import Any

from defi.config import replace, save_config
from defi.errors import ConfigError
from defi.experiments.demo.config import STAGE_DOC, STAGES, DemoConfig, changed_settings, demo_clips_for_idm, resolve


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
        for stage in STAGES[STAGES.index(name) + 1:]:
            self.stages.pop(stage, None)


# ------------------------------------------------------------------------------------------------ stages
def _has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("step_*"))


def _generate(gen) -> dict[str, Any]:
    from defi.data.sources.metaworld import generate_metaworld
    from defi.data.store import EpisodeStore

    report = generate_metaworld(gen)
    store = EpisodeStore.open(gen.out)
    tasks = sorted({str(r.get("task", "")) for r in store.episodes})
    return {"episodes": len(store.episodes), "frames": store.num_frames, "tasks": tasks,
            "fps": float(store.info.fps), "failed_expert_attempts": report.failed_attempts,
            "generation_frames_per_s": round(report.frames_per_s, 1), "disk_mib": round(store.disk_bytes() / 2**20, 1)}


def stage_corpus(cfg: DemoConfig) -> dict[str, Any]:
    return _generate(cfg.corpus)


def stage_demos(cfg: DemoConfig) -> dict[str, Any]:
    return _generate(cfg.demos)


def stage_gfdm(cfg: DemoConfig) -> dict[str, Any]:
    from defi.train import pretrain_fdm

    metrics = pretrain_fdm.run(replace(cfg.fdm, resume=_has_checkpoint(cfg.fdm.run_dir)))
    held = metrics["held_out"]
    return {k: held[k] for k in ("model_mse", "one_step_mse", "copy_mse", "mse_ratio_model_over_copy",
                                 "mse_ratio_one_step_over_copy", "moving_mse_ratio_one_step_over_copy") if k in held}


def stage_gidm(cfg: DemoConfig) -> dict[str, Any]:
    from defi.train import pretrain_idm

    # pretrained on action-free corpus clips only; held-out scoring (prediction MSE, linear probe of the true
    # actions, split by episode) on the labeled demos, which the GIDM never trains on
    # (the probe is fitted on half of the demo episodes and scored on the other half)
    idm = replace(cfg.idm, resume=_has_checkpoint(cfg.idm.run_dir))
    metrics = pretrain_idm.run(idm, {"val": demo_clips_for_idm(cfg, "val"), "probe": demo_clips_for_idm(cfg, "train")})
    keys = ("mse_over_copy", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action",
            "probe_r2_feature_diff")
    return {k: metrics["held_out"][k] for k in keys if k in metrics["held_out"]}


def compare_config(cfg: DemoConfig, variants: tuple[str, ...] | None = None):
    from defi.experiments.compare import CompareConfig

    return CompareConfig(run_dir=Path(cfg.run_dir) / "compare", fdm=str(cfg.fdm.run_dir), idm=str(cfg.idm.run_dir),
                         variants=tuple(variants or cfg.variants), finetune=cfg.finetune)


def stage_compare(cfg: DemoConfig) -> dict[str, Any]:
    from defi.experiments.compare import compare

    results = compare(compare_config(cfg))
    return {v: {"pc_success": r["overall"]["pc_success"], "ci95": [r["overall"]["ci95_low"], r["overall"]["ci95_high"]]}
            for v, r in results.items()}


def stage_latency(cfg: DemoConfig) -> dict[str, Any]:
    import torch

    from defi.eval.latency import policy_latency
    from defi.policies import load_policy

    policy = load_policy(Path(cfg.run_dir) / "compare" / "defi" / "model")
    # the image diffusion policy, timed in turn with DeFI: the ratio holds on other machines, milliseconds do not
    dp_dir = Path(cfg.run_dir) / "compare" / "image_dp" / "model"
    baseline = load_policy(dp_dir) if (dp_dir / "config.json").is_file() else None
    threads = torch.get_num_threads()
    out = {"all_threads": policy_latency(policy, cfg.latency_repeats, baseline=baseline)}
    try:  # one thread: what each evaluation worker process gets
        torch.set_num_threads(1)
        out["one_thread"] = policy_latency(policy, cfg.latency_repeats, baseline=baseline)
    finally:
        torch.set_num_threads(threads)
    path = Path(cfg.run_dir) / "latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return {k: round(v["whole_ms"], 1) for k, v in out.items()}


def stage_latents(cfg: DemoConfig) -> dict[str, Any]:
    from defi.experiments.demo.latents import latent_action_picture

    return latent_action_picture(cfg, Path(cfg.run_dir) / "assets" / "latent_actions.png")


def stage_report(cfg: DemoConfig) -> dict[str, Any]:
    from defi.experiments.demo.report import write_report

    paths = write_report(Path(cfg.run_dir))
    return {k: str(v) for k, v in paths.items()}


STAGE_FUNCTIONS: dict[str, Callable[[DemoConfig], dict[str, Any]]] = {
    "corpus": stage_corpus, "demos": stage_demos, "gfdm": stage_gfdm, "gidm": stage_gidm,
    "compare": stage_compare, "latency": stage_latency, "latents": stage_latents, "report": stage_report,
}


def _check_same_config(cfg: DemoConfig, path: Path) -> None:
    """Reusing finished stages is only honest when they were made with the same settings."""
    changed = changed_settings(cfg, path, ignore=("latency_repeats", "redo"))
    if changed:
        raise ConfigError(f"{path}: this run directory was made with other settings (differs in: "
                          f"{', '.join(changed)}); use a new --run-dir, or delete the directory to start over")


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage that has not finished yet; `cfg.redo` names stages to run again (and everything after)."""
    from defi.config import validate_config

    validate_config(cfg)
    cfg = resolve(cfg)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, root / "config.json")
    save_config(cfg, root / "config.json")
    log = StageLog(root / "stages.json")
    for name in cfg.redo:
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
