"""`defi study`: does pretraining pay off? DeFI vs the same architecture without pretraining vs an image diffusion
policy, finetuned on few demonstrations, on enough seeds and episodes for an interval that can exclude zero.

Stages, each resumable (finished work is reused when the command runs again; an interrupted finetuning run
continues from its checkpoint):

1. `corpus`, `corpus_other`  action-free pretraining videos of the evaluation tasks (many scenes each) and of
             other tasks; actions and states dropped
2. `demos`   labeled demonstrations of the evaluation tasks, `max(demo_counts)` per task (other seeds)
3. `training` the GFDM and GIDM pretraining (once; every arm and seed reuses them) and, for every demo count x
             training seed x arm, finetuning on the first n demos of each task (a seeded, nested subset per
             training seed) and evaluation on the SAME episodes (positions and per-episode sampling seeds) with the
             real camera and, with `finetune.eval.vision_check`, another scene's image; one schedule, so the
             image DP runs train while the GFDM and GIDM do
4. `report`  study.json / study.md / study_data_efficiency.png: per-task and pooled success with Wilson
             intervals, the paired difference of each arm pair with a bootstrap interval (training seeds, then
             episodes within tasks, resampled), the vision-reliance gap, and the data-efficiency curve (Figure 4)

Jobs execute `workers` at a time in separate processes with one torch thread each (two busy multi-threaded
processes slow each other down 10-100x on a small CPU).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi.config import Config, from_dict, preset, replace, save_config, to_dict
from defi.data.sources.metaworld import MetaWorldGenConfig
from defi.errors import ConfigError, DefiError
from defi.eval.stats import paired_difference, pct, points, summarise
from defi.experiments.compare import Variant, finished_metrics, variant_config
from defi.experiments.regime import CAMERA, CORPUS_TASKS, OTHER_TASKS, regime_stages
from defi.train.finetune import FinetuneConfig
from defi.train.pretrain_fdm import PretrainFDMConfig
from defi.train.pretrain_idm import PretrainIDMConfig

LABELS = {"defi": "DeFI (pretrained)", "defi-scratch": "no pretraining", "image_dp": "image diffusion policy"}
PAIRS = (("defi", "defi-scratch"), ("defi", "image_dp"), ("defi-scratch", "image_dp"))


@dataclass
class StudyConfig(Config):
    run_dir: Path = Path("runs/study")
    seed: int = 0
    """Seed of the data (corpus and demonstrations); evaluation positions come from EvalConfig.seed."""
    corpus: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Action-free pretraining videos of the evaluation tasks (and candidates), many scenes per task (`out` and
    `action_free` are set by the study)."""
    corpus_other: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Action-free videos of other tasks (`out` and `action_free` are set by the study)."""
    corpus_weights: tuple[float, float] = (3.0, 1.0)
    """Sampling weights of the two corpora in pretraining (evaluation tasks, other tasks)."""
    demos: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Labeled demonstrations (`out`, `tasks` and `episodes_per_task` are set by the study)."""
    demo_counts: tuple[int, ...] = (2, 5, 10)
    """Demonstrations per task of each data-efficiency point."""
    train_seeds: tuple[int, ...] = (0, 1, 2)
    """Finetuning seeds (initial weights, batches and which demonstrations of each task are used)."""
    arms: tuple[Variant, ...] = ("defi", "defi-scratch", "image_dp")
    fdm: PretrainFDMConfig = field(default_factory=lambda: PretrainFDMConfig.preset("small"))
    idm: PretrainIDMConfig = field(default_factory=lambda: PretrainIDMConfig.preset("small"))
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig.preset("small"))
    """The finetuning recipe and the evaluation (tasks, episodes per task, vision check) of every run."""
    workers: int = 2
    """Runs executed at once, each a process with one torch thread."""
    bootstrap: int = 10_000

    def validate(self) -> None:
        self.check(len(self.demo_counts) >= 1 and all(n >= 1 for n in self.demo_counts), "demo_counts",
                   "positive numbers of demonstrations per task")
        self.check(len(self.train_seeds) >= 1, "train_seeds", "at least one seed")
        self.check(len(set(self.arms)) == len(self.arms) and len(self.arms) >= 1, "arms", "distinct arms")
        self.check(self.workers >= 1, "workers", ">= 1")


def resolve(cfg: StudyConfig) -> StudyConfig:
    """Point every stage at its directory under run_dir; the demonstrations are of the evaluation tasks."""
    root = Path(cfg.run_dir)
    corpus_dir, other_dir, demos_dir = root / "data" / "corpus", root / "data" / "corpus-other", root / "data" / "demos"
    tasks = ",".join(cfg.finetune.eval.tasks)
    corpus = replace(cfg.corpus, out=corpus_dir, action_free=True, seed=cfg.seed)
    other = replace(cfg.corpus_other, out=other_dir, action_free=True, seed=cfg.seed)
    demos = replace(cfg.demos, out=demos_dir, action_free=False, seed=cfg.seed + 1000, tasks=tasks,
                    episodes_per_task=max(cfg.demo_counts))
    sources = [(str(corpus_dir), cfg.corpus_weights[0]), (str(other_dir), cfg.corpus_weights[1])]
    fdm = replace(cfg.fdm, run_dir=root / "gfdm", data=replace(cfg.fdm.data, sources=sources, seed=cfg.seed))
    idm = replace(cfg.idm, run_dir=root / "gidm", data=replace(cfg.idm.data, sources=sources, seed=cfg.seed))
    finetune = replace(cfg.finetune, data=replace(cfg.finetune.data, sources=[(str(demos_dir), 1.0)]))
    return replace(cfg, corpus=corpus, corpus_other=other, demos=demos, fdm=fdm, idm=idm, finetune=finetune)


# ------------------------------------------------------------------------------------------------ runs
def run_dir_of(cfg: StudyConfig, demos: int, seed: int, arm: str) -> Path:
    return Path(cfg.run_dir) / "runs" / f"demos{demos}" / f"seed{seed}" / arm


def run_config(cfg: StudyConfig, demos: int, seed: int, arm: str) -> FinetuneConfig:
    """One finetuning run: the first `demos` demonstrations of each task (a seeded subset, nested across counts),
    seed `seed`, evaluated on the study's fixed episodes."""
    from defi.experiments.compare import CompareConfig

    base = replace(cfg.finetune,
                   data=replace(cfg.finetune.data, episode_fraction=demos / max(cfg.demo_counts), seed=seed,
                                val_fraction=0.0),
                   trainer=replace(cfg.finetune.trainer, seed=seed), val_batches=0)
    compare = CompareConfig(run_dir=run_dir_of(cfg, demos, seed, arm).parent, fdm=str(cfg.fdm.run_dir),
                            idm=str(cfg.idm.run_dir), variants=(arm,), finetune=base)
    return variant_config(compare, arm)


def _run_one(args: tuple[dict[str, Any], str]) -> str:
    """A worker process: finetune and evaluate one run (one torch thread), resuming it if interrupted."""
    import torch

    from defi.train import finetune

    cfg_dict, run_dir = args
    torch.set_num_threads(1)
    ft = from_dict(FinetuneConfig, cfg_dict)
    if finished_metrics(Path(run_dir)) is None:
        resume = any((Path(run_dir) / "checkpoints").glob("step_*"))
        finetune.run(replace(ft, resume=resume, trainer=replace(ft.trainer, progress=False)))
    return run_dir


@dataclass(frozen=True)
class Job:
    """One unit of the training stage: a pretraining (`gfdm`, `gidm`) or a finetuning run (`run`)."""

    name: str
    kind: str
    needs: tuple[str, ...] = ()
    run: tuple[int, int, str] | None = None


def _exit_with_parent(poll_s: float = 5.0) -> None:
    """End this worker when the study process is gone: a killed study (SIGTERM/SIGKILL reach only the parent)
    would otherwise leave its jobs training on, racing the next `defi study` on the same checkpoints. At most
    one checkpoint interval of work is lost; the next run resumes from the last checkpoint."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _job_main(args: tuple[dict[str, Any], Job]) -> tuple[str, dict[str, Any], float]:
    """A worker process (one torch thread): one job, resuming where an earlier attempt stopped."""
    import torch

    torch.set_num_threads(1)
    import multiprocessing as mp

    if mp.parent_process() is not None:  # a pool worker, not the study process itself (workers=1)
        _exit_with_parent()
    cfg_dict, job = args
    cfg = from_dict(StudyConfig, cfg_dict)
    start = time.perf_counter()
    if job.kind == "run":
        assert job.run is not None
        _run_one((to_dict(run_config(cfg, *job.run)), str(run_dir_of(cfg, *job.run))))
        summary: dict[str, Any] = {"run_dir": str(run_dir_of(cfg, *job.run))}
    else:
        summary = _stage(cfg, job.kind)
    return job.name, summary, time.perf_counter() - start


def training_jobs(cfg: StudyConfig) -> list[Job]:
    """Pretraining and every demo count x seed x arm. The DeFI arms wait for both pretrained models (no-pretraining
    takes its architecture from their saved configs); the image diffusion policy waits for nothing."""
    uses_models = {"defi", "defi-scratch"}
    jobs = [Job("gfdm", "gfdm"), Job("gidm", "gidm")] if uses_models & set(cfg.arms) else []
    for demos in sorted(cfg.demo_counts):
        for seed in cfg.train_seeds:
            for arm in cfg.arms:
                jobs.append(Job(f"demos{demos}/seed{seed}/{arm}", "run",
                                ("gfdm", "gidm") if arm in uses_models else (), (demos, seed, arm)))
    return jobs


def _job_finished(cfg: StudyConfig, job: Job) -> bool:
    if job.kind == "run":
        assert job.run is not None
        return finished_metrics(run_dir_of(cfg, *job.run)) is not None
    run_dir = Path(cfg.fdm.run_dir if job.kind == "gfdm" else cfg.idm.run_dir)
    done = (run_dir / "metrics.json").is_file()
    return done and (job.kind == "gfdm" or (Path(cfg.run_dir) / "gidm" / "latent_actions.json").is_file())


def stage_training(cfg: StudyConfig, on_done: Any = None) -> dict[str, Any]:
    """Pretraining and the finetuning runs as one schedule, `workers` processes at a time (one torch thread
    each): the GFDM and the GIDM train side by side, and runs that need neither (image DP) fill a worker while
    the longer pretraining goes on, so a 2-core machine is not left idle. Finished jobs are reused; an
    interrupted one resumes from its checkpoint. `on_done(name, summary, wall_s)` is called as each job ends."""
    import multiprocessing as mp
    import queue

    from tqdm.auto import tqdm

    jobs = training_jobs(cfg)
    done = {j.name for j in jobs if _job_finished(cfg, j)}
    todo = [j for j in jobs if j.name not in done]
    print(f"== study training: {len(done)} of {len(jobs)} jobs finished earlier; {len(todo)} to go, "
          f"{cfg.workers} at a time", flush=True)
    cfg_dict = to_dict(cfg)
    bar = tqdm(total=len(jobs), initial=len(done), desc="study jobs", dynamic_ncols=True)

    def ready() -> list[Job]:
        free = [j for j in todo if all(n in done for n in j.needs)]
        # pretraining first, then the runs that waited for it (the comparison the study is about), each in
        # listed order; image DP runs fill a free worker while pretraining goes on
        return sorted(free, key=lambda j: (j.kind == "run", j.run is not None and j.run[2] == "image_dp"))

    def finish(name: str, summary: dict[str, Any], wall_s: float) -> None:
        done.add(name)
        bar.update(1)
        print(f"== study job {name} finished in {wall_s:.0f} s", flush=True)
        if on_done is not None:
            on_done(name, summary, wall_s)

    try:
        if cfg.workers == 1:
            while todo:
                if not ready():
                    raise DefiError(f"study jobs {[j.name for j in todo]} wait for jobs that are not scheduled")
                job = ready()[0]
                todo.remove(job)
                finish(*_job_main((cfg_dict, job)))
        else:
            # multiprocessing.Pool, not concurrent.futures: ProcessPoolExecutor(max_tasks_per_child=1) on Python
            # 3.11 left a submitted job unstarted after a worker retired (measured: the study idled on one core)
            ended: queue.Queue = queue.Queue()
            with mp.get_context("spawn").Pool(cfg.workers, maxtasksperchild=1) as pool:
                running = 0
                while todo or running:
                    for job in ready()[: cfg.workers - running]:
                        todo.remove(job)
                        running += 1
                        pool.apply_async(_job_main, ((cfg_dict, job),), callback=lambda r: ended.put((r, None)),
                                         error_callback=lambda e: ended.put((None, e)))
                    if not running:
                        raise DefiError(f"study jobs {[j.name for j in todo]} wait for jobs that are not scheduled")
                    result, error = ended.get()
                    running -= 1
                    if error is not None:
                        raise error
                    finish(*result)
    finally:
        bar.close()
    return {"jobs": len(jobs)}


# ------------------------------------------------------------------------------------------------ analysis
def _episodes(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        raise DefiError(f"{path}: missing (the run did not finish its evaluation)")
    return json.loads(path.read_text())["episodes"]


def analyse(cfg: StudyConfig) -> dict[str, Any]:
    """Success per arm and demo count (pooled and per task), paired differences between arms and the
    vision-reliance gap, with intervals that resample training seeds, then episodes within tasks."""
    tasks = list(cfg.finetune.eval.tasks)
    out: dict[str, Any] = {"tasks": tasks, "demo_counts": list(cfg.demo_counts), "train_seeds": list(cfg.train_seeds),
                           "arms": list(cfg.arms), "episodes_per_task": cfg.finetune.eval.episodes_per_task,
                           "by_demos": {}}
    for demos in sorted(cfg.demo_counts):
        real: dict[str, dict[tuple, bool]] = {}
        wrong: dict[str, dict[tuple, bool]] = {}
        for arm in cfg.arms:
            real[arm], wrong[arm] = {}, {}
            for seed in cfg.train_seeds:
                run = run_dir_of(cfg, demos, seed, arm)
                if finished_metrics(run) is None:
                    continue
                for e in _episodes(run):
                    key = (seed, e["task"], e["episode"])
                    (real if e.get("mode", "real") == "real" else wrong)[arm][key] = bool(e["success"])
        row: dict[str, Any] = {"arms": {}, "pairs": {}}
        for arm in cfg.arms:
            eps = real[arm]
            if not eps:
                continue
            entry = {"overall": summarise(list(eps.values())),
                     "per_task": {t: summarise([v for k, v in eps.items() if k[1] == t]) for t in tasks},
                     "seeds": sorted({k[0] for k in eps})}
            entry["overall_ci_seeds_episodes"] = _rate_interval(eps, cfg.bootstrap)
            keys = sorted(eps.keys() & wrong[arm].keys())
            if keys:
                entry["wrong_scene"] = summarise([wrong[arm][k] for k in keys])
                entry["vision_reliance"] = paired_difference(
                    [eps[k] for k in keys], [wrong[arm][k] for k in keys], strata=[k[1] for k in keys],
                    clusters=[k[0] for k in keys], n_boot=cfg.bootstrap)
                entry["vision_reliance_per_task"] = {
                    t: paired_difference([eps[k] for k in keys if k[1] == t], [wrong[arm][k] for k in keys if k[1] == t],
                                         clusters=[k[0] for k in keys if k[1] == t], n_boot=cfg.bootstrap)
                    for t in tasks}
            row["arms"][arm] = entry
        for a, b in PAIRS:
            keys = sorted(real.get(a, {}).keys() & real.get(b, {}).keys())
            if keys:
                row["pairs"][f"{a} - {b}"] = {
                    "pooled": paired_difference([real[a][k] for k in keys], [real[b][k] for k in keys],
                                                strata=[k[1] for k in keys], clusters=[k[0] for k in keys],
                                                n_boot=cfg.bootstrap),
                    "per_task": {t: paired_difference([real[a][k] for k in keys if k[1] == t],
                                                      [real[b][k] for k in keys if k[1] == t],
                                                      clusters=[k[0] for k in keys if k[1] == t],
                                                      n_boot=cfg.bootstrap) for t in tasks}}
        out["by_demos"][str(demos)] = row
    return out


def _rate_interval(episodes: dict[tuple, bool], n_boot: int) -> list[float]:
    """95% interval of a pooled success rate, resampling training seeds, then episodes within tasks."""
    keys = sorted(episodes)
    d = paired_difference([episodes[k] for k in keys], [0.0] * len(keys), strata=[k[1] for k in keys],
                          clusters=[k[0] for k in keys], n_boot=n_boot)
    return [d["ci95_low"], d["ci95_high"]]


def markdown(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    lines = [f"Evaluation: {len(tasks)} tasks x {result['episodes_per_task']} episodes per training seed "
             f"(seeds {result['train_seeds']}), the same positions and sampling seeds for every arm. Success % with "
             "Wilson 95% intervals per cell; the pooled row's second interval and every difference resample "
             "training seeds, then episodes within tasks (bootstrap).", ""]
    for demos, row in result["by_demos"].items():
        arms = [a for a in result["arms"] if a in row["arms"]]
        # a demo count run on fewer seeds than the study's (a first point, an extension in progress) says so in its
        # heading, so that its intervals are not read as covering every seed
        seeds = sorted({s for a in arms for s in row["arms"][a]["seeds"]})
        partial = f" (training seeds {seeds} of {result['train_seeds']})" if seeds != sorted(result["train_seeds"]) else ""
        lines += [f"### {demos} demonstrations per task{partial}", "",
                  "| task | " + " | ".join(LABELS.get(a, a) for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
        for t in tasks:
            lines.append(f"| {t.removesuffix('-v3')} | " + " | ".join(pct(row["arms"][a]["per_task"][t]) for a in arms)
                         + " |")
        lines.append("| **pooled** | " + " | ".join(
            f"**{pct(row['arms'][a]['overall'])}** (seeds+episodes: [{100 * row['arms'][a]['overall_ci_seeds_episodes'][0]:.0f}, "
            f"{100 * row['arms'][a]['overall_ci_seeds_episodes'][1]:.0f}])" for a in arms) + " |")
        if all("vision_reliance" in row["arms"][a] for a in arms):
            lines.append("| with another scene's image | " + " | ".join(pct(row["arms"][a]["wrong_scene"]) for a in arms)
                         + " |")
            lines.append("| **vision reliance** (points) | " + " | ".join(points(row["arms"][a]["vision_reliance"])
                                                                       for a in arms) + " |")
        lines.append("")
        for name, pair in row["pairs"].items():
            a, b = name.split(" - ")
            per_task = ", ".join(f"{t.removesuffix('-v3')} {points(d)}" for t, d in pair["per_task"].items())
            lines.append(f"- {LABELS.get(a, a)} - {LABELS.get(b, b)}: **{points(pair['pooled'])}** points "
                         f"(per task: {per_task})")
        lines.append("")
    return "\n".join(lines)


def pretrained_markdown(result: dict[str, Any]) -> str:
    """The pretrained parts against issue 13's targets (GFDM one step <= 0.6x copying the current frame on moving
    clips; GIDM >= 50% of codes in use, latent actions predicting the end-effector motion better than the feature
    difference)."""
    g, i, la = result.get("gfdm") or {}, result.get("gidm") or {}, result.get("gidm_latent_actions") or {}

    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) else "-"

    lines = ["## Pretrained parts", ""]
    if g:
        lines.append(f"- GFDM, held-out corpus clips: one-step future MSE / copying the current frame "
                     f"{f(g.get('mse_ratio_one_step_over_copy'))} (on the half that moves most: "
                     f"{f(g.get('moving_mse_ratio_one_step_over_copy'))}; target <= 0.6); sampled (multi-step) "
                     f"{f(g.get('mse_ratio_model_over_copy'))}")
    if i:
        lines.append(f"- GIDM, labeled demonstrations it never saw: codes used {f(i.get('codes_used_fraction'))} "
                     f"(perplexity {f(i.get('code_perplexity'))}; target >= 0.5); probe R^2 to the true actions: "
                     f"latent action {f(i.get('probe_r2_latent_action'))} vs feature difference "
                     f"{f(i.get('probe_r2_feature_diff'))}")
    if la:
        lines.append(f"- GIDM latent actions -> end-effector displacement, probe R^2 {f(la.get('ee_motion_r2_latent_action'))} "
                     f"vs feature difference {f(la.get('ee_motion_r2_feature_diff'))} (target: above)")
    return "\n".join(lines) + "\n\n"


def efficiency_plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm in result["arms"]:
        xs, ys, lo, hi = [], [], [], []
        for demos, row in result["by_demos"].items():
            if arm in row["arms"]:
                entry = row["arms"][arm]
                xs.append(int(demos))
                ys.append(100 * entry["overall"]["success_rate"])
                lo.append(ys[-1] - 100 * entry["overall_ci_seeds_episodes"][0])
                hi.append(100 * entry["overall_ci_seeds_episodes"][1] - ys[-1])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=LABELS.get(arm, arm))
    ax.set_xlabel("demonstrations per task")
    ax.set_ylabel("success % (95% CI: seeds, episodes)")
    ax.set_xscale("log")
    ax.set_xticks([int(d) for d in result["by_demos"]])
    ax.set_xticklabels(list(result["by_demos"]))
    ax.minorticks_off()  # the log axis's minor labels (3x10^0, ...) would crowd the demo counts
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_report(cfg: StudyConfig) -> dict[str, Any]:
    root = Path(cfg.run_dir)
    result = analyse(cfg)
    result["gfdm"] = (json.loads((root / "gfdm" / "metrics.json").read_text()) if (root / "gfdm" / "metrics.json").is_file()
                      else {}).get("held_out")
    result["gidm"] = (json.loads((root / "gidm" / "metrics.json").read_text()) if (root / "gidm" / "metrics.json").is_file()
                      else {}).get("held_out")
    if (root / "gidm" / "latent_actions.json").is_file():
        result["gidm_latent_actions"] = json.loads((root / "gidm" / "latent_actions.json").read_text())
    (root / "study.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (root / "study.md").write_text("# Pretraining study\n\n" + pretrained_markdown(result) + markdown(result) + "\n")
    efficiency_plot(result, root / "study_data_efficiency.png")
    return {"report": str(root / "study.md")}


# ------------------------------------------------------------------------------------------------ stages
STAGES = ("corpus", "corpus_other", "demos", "training", "report")
"""`training` is the GFDM and GIDM pretraining and every finetuning run, scheduled together (`stage_training`);
stages.json logs each of its jobs under its own name."""


def _has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("step_*"))


def _stage(cfg: StudyConfig, name: str) -> dict[str, Any]:
    if name in ("corpus", "corpus_other", "demos"):
        from defi.data.sources.metaworld import generate_metaworld

        report = generate_metaworld(getattr(cfg, name))
        return {"kept": report.kept, "frames": report.frames}
    if name == "gfdm":
        from defi.train import pretrain_fdm

        if (Path(cfg.fdm.run_dir) / "metrics.json").is_file():
            return {"reused": str(cfg.fdm.run_dir)}
        return pretrain_fdm.run(replace(cfg.fdm, resume=_has_checkpoint(cfg.fdm.run_dir)))["held_out"]
    if name == "gidm":
        from defi.data import build_clip_dataset
        from defi.experiments.demo.latents import gidm_latent_picture
        from defi.train import pretrain_idm

        # scored on the labeled demonstrations (never trained on): the probe is fitted on half of the episodes;
        # with a single demonstration per task there is nothing to hold out, and the corpus's split scores it
        demos = replace(cfg.idm.data, sources=[(str(cfg.demos.out), 1.0)], val_fraction=0.5)
        metrics_path = Path(cfg.idm.run_dir) / "metrics.json"
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text())["held_out"]
        else:
            held_out = {"val": build_clip_dataset(demos, "val"), "probe": build_clip_dataset(demos, "train")}
            idm = replace(cfg.idm, resume=_has_checkpoint(cfg.idm.run_dir))
            metrics = pretrain_idm.run(idm, held_out if len(held_out["val"]) else None)["held_out"]
        picture_path = Path(cfg.run_dir) / "gidm" / "latent_actions.json"
        if not picture_path.is_file():
            # does the latent action carry the end-effector's motion (issue 13's GIDM target)?
            picture = gidm_latent_picture(Path(cfg.idm.run_dir) / "model", build_clip_dataset(demos, "all"), 1200,
                                          picture_path.with_suffix(".png"))
            picture_path.write_text(json.dumps(picture, indent=2) + "\n")
        return {**metrics, **json.loads(picture_path.read_text())}
    if name == "training":
        raise DefiError("the training stage is scheduled by stage_training, not _stage")
    return stage_report(cfg)


def run(cfg: StudyConfig) -> dict[str, Any]:
    """Run every stage (finished work is reused); prints the report."""
    from defi.config import validate_config
    from defi.experiments.demo.config import changed_settings

    validate_config(cfg)
    cfg = resolve(cfg)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    changed = changed_settings(cfg, root / "config.json", ignore=("workers", "bootstrap", "demo_counts",
                                                                   "train_seeds", "arms"))
    if changed:
        raise ConfigError(f"{root / 'config.json'}: this study was made with other settings (differs in: "
                          f"{', '.join(changed)}); use a new --run-dir")
    save_config(cfg, root / "config.json")
    log_path = root / "stages.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}

    def record(name: str, summary: dict[str, Any], wall_s: float) -> None:
        log[name] = {"wall_s": round(wall_s, 1), "summary": summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(log, indent=2, default=str) + "\n")
        os.replace(tmp, log_path)

    for name in STAGES:
        start = time.perf_counter()
        print(f"== [{name}]", flush=True)
        summary = stage_training(cfg, on_done=record) if name == "training" else _stage(cfg, name)
        record(name, summary, time.perf_counter() - start)
    print((root / "study.md").read_text())
    return log


@preset(StudyConfig, "tiny")
def _tiny() -> StudyConfig:
    from defi.experiments.demo.config import DemoConfig

    demo = DemoConfig.preset("tiny")
    ft = replace(demo.finetune, eval=replace(demo.finetune.eval, tasks=("reach-v3",), episodes_per_task=2,
                                             vision_check=True, video_episodes=0))
    return StudyConfig(run_dir=Path("runs/study-tiny"), corpus=replace(demo.corpus, tasks="reach", episodes_per_task=3),
                       corpus_other=replace(demo.corpus, tasks="button-press", episodes_per_task=2),
                       demos=MetaWorldGenConfig(image_size=32, max_steps=150, workers=1, progress=False),
                       demo_counts=(1, 2), train_seeds=(0, 1), fdm=demo.fdm, idm=demo.idm, finetune=ft, workers=1,
                       bootstrap=200)


@preset(StudyConfig, "small")
def _small() -> StudyConfig:
    """The regime of issue 13 (`defi.experiments.regime`): 6 tasks whose targets the camera sees, no proprio. The
    GIDM (FSQ, 16 queries) pretrains for 8000 steps, where its latent actions carry the motion (at 2000 they were on
    par with the feature difference), and every arm finetunes for 6000 steps: at 2000 the DeFI policy was
    undertrained and looked less (vision reliance +28 at 2000 steps, +45 at 6000, 10 demos)."""
    gen = dict(cameras=(CAMERA,), image_size=64, workers=1, progress=False)
    fdm, idm, ft = regime_stages(fdm_steps=2000, idm_steps=8000, finetune_steps=6000, episodes_per_task=20)
    return StudyConfig(corpus=MetaWorldGenConfig(tasks=CORPUS_TASKS, episodes_per_task=100, **gen),
                       corpus_other=MetaWorldGenConfig(tasks=OTHER_TASKS, episodes_per_task=10, **gen),
                       demos=MetaWorldGenConfig(**gen), fdm=fdm, idm=idm, finetune=ft)
