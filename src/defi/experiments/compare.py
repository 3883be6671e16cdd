"""`defi compare`: the DeFI policy and both baselines, finetuned on the same demonstrations and evaluated on
the same Meta-World episodes in one run (issue 6's table; the ablation runner builds on it).

Variants: `defi` (pretrained GFDM + GIDM, the paper's recipe), `defi-scratch` (the same architecture without
pretraining) and `image_dp` (a plain image-conditioned diffusion policy). Each variant is a finetune run
directory under `run_dir`; a variant whose `metrics.json` already holds evaluation results is reused, so
re-running the command after an interruption only does the missing work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from defi.config import Config, preset, replace, save_config
from defi.errors import DefiError
from defi.eval.metaworld import format_table
from defi.train import finetune
from defi.train.finetune import FinetuneConfig

Variant = Literal["defi", "defi-scratch", "image_dp"]


@dataclass
class CompareConfig(Config):
    run_dir: Path = Path("runs/compare")
    fdm: str = ""
    """`defi pretrain-fdm` run directory (needed by the `defi` variant)."""
    idm: str = ""
    """`defi pretrain-idm` run directory (needed by the `defi` variant)."""
    variants: tuple[Variant, ...] = ("defi", "defi-scratch", "image_dp")
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig.preset("small"))

    def validate(self) -> None:
        self.check(len(self.variants) >= 1, "variants", "at least one variant")


def variant_config(cfg: CompareConfig, variant: str) -> FinetuneConfig:
    base = replace(cfg.finetune, run_dir=Path(cfg.run_dir) / variant, evaluate=True, resume=False)
    if variant == "defi":
        if not cfg.fdm or not cfg.idm:
            raise DefiError("variant 'defi' needs --fdm and --idm (pretrain-fdm / pretrain-idm run directories)")
        return replace(base, policy_type="defi", fdm=cfg.fdm, idm=cfg.idm)
    if variant == "defi-scratch":
        # the same architecture as the pretrained policy (the runs' configs when given), random weights
        return replace(base, policy_type="defi", fdm=cfg.fdm, idm=cfg.idm, pretrained_weights=False)
    return replace(base, policy_type="image_dp", fdm="", idm="")


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A finetune run's metrics.json when it holds closed-loop results (the run is complete), else None."""
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        if "closed_loop" in metrics:
            return metrics
    return None


def compare(cfg: CompareConfig) -> dict[str, Any]:
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.run_dir) / "config.json")
    results: dict[str, Any] = {}
    for variant in cfg.variants:
        vcfg = variant_config(cfg, variant)
        metrics = finished_metrics(vcfg.run_dir)
        if metrics is None:
            if (vcfg.run_dir / "checkpoints").is_dir():
                vcfg = replace(vcfg, resume=True)  # an interrupted variant continues where it stopped
            print(f"== {variant}: finetuning in {vcfg.run_dir}")
            metrics = finetune.run(vcfg)
        else:
            print(f"== {variant}: reusing {vcfg.run_dir / 'metrics.json'}")
        closed = metrics["closed_loop"]
        results[variant] = {"overall": closed["overall"], "per_task": closed["per_task"],
                            "policy_ms_per_call": closed["policy_ms_per_call"],
                            "train_time_s": metrics["train"].get("train_time_s"),
                            "val_action_mse": metrics["held_out"].get("val_action_mse"),
                            "vision_check": closed.get("vision_check")}
    table = format_table(results)
    demos = cfg.finetune.data.sources
    text = (f"# DeFI vs baselines on Meta-World\n\nDemonstrations: {demos}; training steps per variant: "
            f"{cfg.finetune.trainer.max_steps}; evaluation: {cfg.finetune.eval.episodes_per_task} episodes per task, "
            "success % with Wilson 95% intervals.\n\n" + table + "\n")
    (Path(cfg.run_dir) / "report.md").write_text(text)
    (Path(cfg.run_dir) / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    return results


for _name in FinetuneConfig.preset_names():
    if _name.startswith("calvin-"):
        continue  # compare evaluates on Meta-World; a CALVIN policy is evaluated with `defi eval-calvin`
    preset(CompareConfig, _name)(lambda name=_name: CompareConfig(finetune=FinetuneConfig.preset(name)))


def run(cfg: CompareConfig) -> dict[str, Any]:
    results = compare(cfg)
    print(f"wrote {Path(cfg.run_dir) / 'report.md'}")
    return results
