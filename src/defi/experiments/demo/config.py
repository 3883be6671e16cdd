"""The demo's configuration: `DemoConfig`, its presets, and what follows from it (run directories, the demo
clips the GIDM is scored on). A leaf module: the pipeline, the report, the ablations and the latent-action
picture all read it; it imports none of them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from defi.config import Config, preset, replace
from defi.data.sources.metaworld import MetaWorldGenConfig
from defi.errors import DefiError
from defi.eval.metaworld import EvalConfig
from defi.experiments.compare import Variant
from defi.experiments.regime import CAMERA, CORPUS_TASKS, regime_stages
from defi.train.finetune import FinetuneConfig
from defi.train.pretrain_fdm import PretrainFDMConfig
from defi.train.pretrain_idm import PretrainIDMConfig

STAGES = ("corpus", "demos", "gfdm", "gidm", "compare", "latency", "latents", "report")

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


@dataclass
class DemoConfig(Config):
    run_dir: Path = Path("runs/demo")
    seed: int = 0
    """One seed for the whole run: data generation, every training stage, evaluation."""
    corpus: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Action-free pretraining videos (`out` and `action_free` are set by the demo)."""
    demos: MetaWorldGenConfig = field(default_factory=MetaWorldGenConfig)
    """Labeled demonstrations of the finetuning tasks (`out` is set by the demo; tasks = finetune.eval.tasks)."""
    fdm: PretrainFDMConfig = field(default_factory=lambda: PretrainFDMConfig.preset("small"))
    idm: PretrainIDMConfig = field(default_factory=lambda: PretrainIDMConfig.preset("small"))
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig.preset("small"))
    variants: tuple[Variant, ...] = ("defi", "defi-scratch", "image_dp")
    latency_repeats: int = 20
    latent_clips: int = 1200
    """Demo clips whose latent actions are drawn in the latent-action picture."""
    redo: tuple[str, ...] = ()
    """Run these stages again, and every later one (not part of the run's identity: reuse is still checked)."""

    def validate(self) -> None:
        self.check(self.latency_repeats >= 1, "latency_repeats", ">= 1")
        self.check(self.latent_clips >= 8, "latent_clips", ">= 8")
        self.check("defi" in self.variants, "variants", "a list that includes 'defi'")
        self.check(all(name in STAGES for name in self.redo), "redo", f"stage names from {', '.join(STAGES)}")


def resolve(cfg: DemoConfig) -> DemoConfig:
    """Point every stage at its directory under run_dir and thread the one seed through them."""
    root = Path(cfg.run_dir)
    corpus_dir, demos_dir = root / "data" / "corpus", root / "data" / "demos"
    tasks = ",".join(cfg.finetune.eval.tasks)
    corpus = replace(cfg.corpus, out=corpus_dir, action_free=True, seed=cfg.seed)
    # demo episodes use other position seeds than the corpus; evaluation uses yet others (EVAL_SEED_OFFSET)
    demos = replace(cfg.demos, out=demos_dir, action_free=False, seed=cfg.seed + 1000, tasks=tasks)
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


def demo_clips_for_idm(cfg: DemoConfig, split: str = "all"):
    """The labeled demos as the GIDM sees clips (its cameras, interval and action chunk). "train" and "val" are
    two halves of the episodes drawn by a seeded permutation, so both hold every task."""
    from defi.data import build_clip_dataset

    data = replace(cfg.idm.data, sources=[(str(cfg.demos.out), 1.0)], val_fraction=0.5)
    return build_clip_dataset(data, split)


def changed_settings(cfg: Config, path: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Top-level fields of `cfg` that differ from the config saved at `path` ([] when there is none). The saved
    config is read back through the config class first, so a field added to defi since the run was made (absent
    from the file) counts as its default rather than as a change."""
    from defi.config import from_dict, to_dict

    if not path.is_file():
        return []
    skip = {"_type", *ignore}
    saved = json.loads(path.read_text())
    try:
        saved = to_dict(from_dict(type(cfg), {k: v for k, v in saved.items() if k != "_type"}))
    except (DefiError, TypeError, ValueError):
        pass  # a field since removed or renamed: compare the file as written
    old = {k: v for k, v in json.loads(json.dumps(saved, default=str)).items() if k not in skip}
    new = {k: v for k, v in json.loads(json.dumps(to_dict(cfg), default=str)).items() if k not in skip}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ------------------------------------------------------------------------------------------------ presets
@preset(DemoConfig, "tiny")
def _tiny() -> DemoConfig:
    """Seconds, for tests: 2 tasks, 32x32 frames, a handful of steps per stage."""
    ft = FinetuneConfig.preset("tiny")
    ft = replace(ft, data=replace(ft.data, val_fraction=0.25),
                 eval=replace(ft.eval, tasks=("reach-v3", "button-press-v3"), max_episode_steps=20))
    idm = PretrainIDMConfig.preset("tiny")
    idm = replace(idm, data=replace(idm.data, cameras=("corner",), image_size=32))
    return DemoConfig(
        run_dir=Path("runs/demo-tiny"),
        corpus=MetaWorldGenConfig(tasks="reach,button-press,drawer-close", episodes_per_task=2, cameras=("corner",),
                                  image_size=32, max_steps=150, workers=1, progress=False),
        demos=MetaWorldGenConfig(episodes_per_task=2, cameras=("corner",), image_size=32, max_steps=150, workers=1,
                                 progress=False),
        fdm=PretrainFDMConfig.preset("tiny"), idm=idm, finetune=ft, latency_repeats=2, latent_clips=32,
    )


# Finetuning / evaluation tasks of the `quick` smoke test: MT10 tasks on which a few demonstrations give a policy a
# chance in a few minutes of CPU training (push, pick-place, peg-insert need far more)
DEMO_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "window-open-v3")


def _small_stages(fdm_steps: int, idm_steps: int, ft_steps: int, eval_tasks: tuple[str, ...], episodes: int,
                  max_episode_steps: int = 500) -> tuple[PretrainFDMConfig, PretrainIDMConfig, FinetuneConfig]:
    fdm = PretrainFDMConfig.preset("small")
    fdm = replace(fdm, trainer=replace(fdm.trainer, max_steps=fdm_steps, checkpoint_every=max(50, fdm_steps // 4),
                                       eval_every=fdm_steps),
                  eval=replace(fdm.eval, clips=16))
    idm = PretrainIDMConfig.preset("small")
    idm = replace(idm, trainer=replace(idm.trainer, max_steps=idm_steps, checkpoint_every=max(50, idm_steps // 2),
                                       eval_every=idm_steps),
                  eval=replace(idm.eval, max_clips=1024))
    ft = FinetuneConfig.preset("small")
    # the whole 8-step chunk (0.1 s at Meta-World's 80 Hz) is executed before replanning: half the policy calls of
    # executing 4, which is what makes 3 policies x 40 episodes fit the CPU budget
    ft = replace(ft, data=replace(ft.data, val_fraction=0.1),
                 trainer=replace(ft.trainer, max_steps=ft_steps, batch_size=16, warmup_steps=min(50, ft_steps // 5),
                                 ema_decay=0.99, checkpoint_every=max(50, ft_steps // 3), eval_every=0),
                 eval=EvalConfig(tasks=eval_tasks, episodes_per_task=episodes, max_episode_steps=max_episode_steps,
                                 execute_steps=8, num_workers=2, video_episodes=1))
    return fdm, idm, ft


@preset(DemoConfig, "quick")
def _quick() -> DemoConfig:
    """<= 10 minutes on a 2-core CPU: every stage runs, the numbers are only a smoke test."""
    fdm, idm, ft = _small_stages(fdm_steps=120, idm_steps=150, ft_steps=120, eval_tasks=DEMO_TASKS[:2], episodes=3,
                                 max_episode_steps=150)
    return DemoConfig(
        run_dir=Path("runs/demo-quick"),
        corpus=MetaWorldGenConfig(tasks="reach,button-press-topdown,drawer-close,window-open,door-close,button-press",
                                  episodes_per_task=3, cameras=("corner",), image_size=64, progress=True),
        demos=MetaWorldGenConfig(episodes_per_task=5, cameras=("corner",), image_size=64, progress=True),
        fdm=fdm, idm=idm, finetune=ft, latency_repeats=10, latent_clips=400,
    )


@preset(DemoConfig, "full")
def _full() -> DemoConfig:
    """<= 45 minutes on a 2-core CPU: the demo's real figures, in the regime of `defi study` (issue 13: six tasks
    whose targets the `workspace_close` camera sees, no proprio state, 10 demonstrations per task of which a tenth
    is held out for the validation loss, the vision-reliance check) with smaller budgets: 40 action-free episodes
    per corpus task instead of 100 (and no corpus of other tasks), 1500 pretraining steps for each model (the study:
    2000 for the GFDM, 8000 for its FSQ GIDM), the VQ GIDM, 2000 finetuning steps instead of 6000, one seed."""
    # the cheaper VQ GIDM: at 1500 steps FSQ's latent actions would not yet beat the feature difference, and the
    # two designs coupled gave the same policy (regime_stages)
    fdm, idm, ft = regime_stages(fdm_steps=1500, idm_steps=1500, finetune_steps=2000, episodes_per_task=20,
                                 eval_workers=2, progress=True, gidm="vq")
    gen = dict(cameras=(CAMERA,), image_size=64, progress=True)
    return DemoConfig(
        run_dir=Path("runs/demo"),
        corpus=MetaWorldGenConfig(tasks=CORPUS_TASKS, episodes_per_task=40, **gen),
        demos=MetaWorldGenConfig(episodes_per_task=10, **gen),
        fdm=fdm, idm=idm, finetune=ft,
    )
