"""`defi ablate`: the paper's ablations at small scale, on top of a finished `defi demo` run.

The rows reuse the demo's corpus, demonstrations and pretrained GFDM / GIDM; a row that is the demo's own DeFI
policy (or its no-pretraining baseline) reuses the demo's finetuned result when the budget is the same. Tables:

- `table4`  decoupled pretraining: none / GIDM pretrained only ("GFDM w/o pre") / GFDM pretrained only
            ("GIDM w/o pre") / both
- `table7`  inverse-model architecture: MLP / Transformer (continuous latents) / GIDM with VQ (ours); the two
            variants are pretrained on the same corpus with the same budget as the demo's GIDM
- `table9`  which modules finetune: adapter only / GFDM+adapter / GIDM+adapter (ours) / all
- `figure4` data efficiency: 10 / 20 / 50 / 100% of the labeled demonstrations (nested subsets per task)

Each row is a finetune run directory under `<demo>/ablate/<table>/<row>`; finished rows are reused, so an
interrupted command continues where it stopped. Results: `<demo>/ablate/ablate.json` and `ablate.md`; the
demo's report includes them when it is written again (`defi demo --redo report`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from defi.config import Config, load_config, preset, replace
from defi.errors import DefiError
from defi.eval.stats import verdict
from defi.experiments.compare import finished_metrics
from defi.experiments.demo.config import DemoConfig, changed_settings, demo_clips_for_idm
from defi.experiments.demo.report import ablation_markdown

TABLES = ("table4", "table7", "table9", "figure4")


@dataclass
class AblateConfig(Config):
    demo_dir: Path = Path("runs/demo")
    """A `defi demo` run directory (its data, pretrained models and comparison are reused)."""
    tables: tuple[str, ...] = TABLES
    fractions: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)
    """Figure 4's fractions of the labeled demonstrations."""
    finetune_steps: int = 0
    """Finetuning steps per row; 0 = the demo's."""
    episodes_per_task: int = 0
    """Evaluation episodes per task per row; 0 = the demo's."""
    tasks: tuple[str, ...] = ()
    """Evaluate on these of the demo's tasks only; () = all of them."""

    default_preset: ClassVar[str] = "default"

    def validate(self) -> None:
        for t in self.tables:
            self.check(t in TABLES, "tables", f"names from {', '.join(TABLES)}")
        self.check(all(0 < f <= 1 for f in self.fractions), "fractions", "fractions in (0, 1]")
        self.check(self.finetune_steps >= 0, "finetune_steps", ">= 0 (0 = the demo's)")
        self.check(self.episodes_per_task >= 0, "episodes_per_task", ">= 0 (0 = the demo's)")


# paper values (CALVIN ABC-D average task length, Len.) for reference next to each row
PAPER = {
    "table4": {"title": "Table 4: decoupled pretraining", "metric": "CALVIN Len.",
               "rows": {"none": None, "gidm_only": 3.28, "gfdm_only": 4.16, "both": 4.51},
               "names": {"none": "no pretraining", "gidm_only": "GFDM w/o pre (GIDM pretrained)",
                         "gfdm_only": "GIDM w/o pre (GFDM pretrained)", "both": "All w/ pre (DeFI)"},
               "order": [("both", "gfdm_only"), ("gfdm_only", "gidm_only"), ("both", "gidm_only"), ("both", "none")]},
    "table7": {"title": "Table 7: inverse dynamics architecture", "metric": "CALVIN Len.",
               "rows": {"mlp": 3.42, "transformer": 4.22, "vq": 4.51},
               "names": {"mlp": "MLP", "transformer": "Transformer (continuous)", "vq": "GIDM, VQ (ours)"},
               "order": [("vq", "transformer"), ("transformer", "mlp"), ("vq", "mlp")]},
    "table9": {"title": "Table 9: which modules finetune", "metric": "CALVIN Len.",
               "rows": {"adapter": 4.33, "gfdm+adapter": 4.35, "gidm+adapter": 4.51, "all": 4.40},
               "names": {"adapter": "Adapter Only", "gfdm+adapter": "GFDM+Adapter", "gidm+adapter": "GIDM+Adapter (ours)",
                         "all": "All Train"},
               "order": [("gidm+adapter", "all"), ("all", "gfdm+adapter"), ("gfdm+adapter", "adapter"),
                         ("gidm+adapter", "adapter")]},
    "figure4": {"title": "Figure 4: data efficiency (share of the labeled demonstrations)", "metric": "",
                "rows": {}, "names": {}, "order": []},
}


@preset(AblateConfig, "default")
def _default() -> AblateConfig:
    return AblateConfig()


def _run_row(ft, run_dir: Path) -> dict[str, Any]:
    from defi.train import finetune

    metrics = finished_metrics(run_dir)
    if metrics is None:
        resume = any((run_dir / "checkpoints").glob("step_*"))
        print(f"== ablate: finetuning {run_dir}" + (" (resuming)" if resume else ""), flush=True)
        metrics = finetune.run(replace(ft, run_dir=run_dir, evaluate=True, resume=resume))
    return {"overall": metrics["closed_loop"]["overall"], "per_task": metrics["closed_loop"]["per_task"],
            "train_time_s": metrics["train"].get("train_time_s"), "run_dir": str(run_dir)}


def _pretrain_variant_idm(demo, name: str, out: Path) -> Path:
    """Pretrain a Table 7 GIDM variant with the demo GIDM's data and budget."""
    from defi.train import pretrain_idm

    model = demo.idm.model
    if name == "mlp":
        model = replace(model, architecture="mlp", quantizer=replace(model.quantizer, kind="continuous"))
    elif name == "transformer":
        model = replace(model, architecture="transformer", quantizer=replace(model.quantizer, kind="continuous"))
    if (out / "model" / "config.json").is_file():
        return out
    resume = any((out / "checkpoints").glob("step_*"))
    print(f"== ablate: pretraining the {name} inverse model in {out}", flush=True)
    pretrain_idm.run(replace(demo.idm, run_dir=out, model=model, resume=resume),
                     {"val": demo_clips_for_idm(demo, "val"), "probe": demo_clips_for_idm(demo, "train")})
    return out


def ablate(cfg: AblateConfig) -> dict[str, Any]:
    demo_dir = Path(cfg.demo_dir)
    if not (demo_dir / "config.json").is_file() or not (demo_dir / "gidm" / "model").is_dir() \
            or not (demo_dir / "gfdm" / "model").is_dir():
        raise DefiError(f"--demo-dir {demo_dir}: expected a `defi demo` run with pretrained gfdm/ and gidm/ "
                        "(run `defi demo` first)")
    demo = load_config(DemoConfig, demo_dir / "config.json")
    ft = replace(demo.finetune, fdm=str(demo.fdm.run_dir), idm=str(demo.idm.run_dir), policy_type="defi")
    unknown = [t for t in cfg.tasks if t not in ft.eval.tasks]
    if unknown:
        raise DefiError(f"--tasks {unknown[0]}: not one of the demo's tasks ({', '.join(ft.eval.tasks)})")
    same_budget = (cfg.finetune_steps in (0, ft.trainer.max_steps) and cfg.episodes_per_task in (0, ft.eval.episodes_per_task)
                   and set(cfg.tasks or ft.eval.tasks) == set(ft.eval.tasks))
    if cfg.tasks:
        ft = replace(ft, eval=replace(ft.eval, tasks=tuple(cfg.tasks)))
    if cfg.finetune_steps:
        ft = replace(ft, trainer=replace(ft.trainer, max_steps=cfg.finetune_steps))
    if cfg.episodes_per_task:
        ft = replace(ft, eval=replace(ft.eval, episodes_per_task=cfg.episodes_per_task))
    root = demo_dir / "ablate"
    root.mkdir(parents=True, exist_ok=True)
    _check_same_budget(cfg, root / "config.json")

    def shared(variant: str) -> Path:
        """The demo's own run of this row when the budget matches, else one run shared by every table."""
        if same_budget and finished_metrics(demo_dir / "compare" / variant) is not None:
            return demo_dir / "compare" / variant
        return root / "shared" / variant

    rows_of: dict[str, dict[str, tuple[Any, Path]]] = {
        "table4": {"none": (replace(ft, pretrained_weights=False), shared("defi-scratch")),
                   "gidm_only": (replace(ft, random_gfdm=True), root / "table4" / "gidm_only"),
                   "gfdm_only": (replace(ft, random_gidm=True), root / "table4" / "gfdm_only"),
                   "both": (ft, shared("defi"))},
        "table9": {t: (replace(ft, defi=replace(ft.defi, trainable=t)),
                       shared("defi") if t == "gidm+adapter" else root / "table9" / t)
                   for t in ("adapter", "gfdm+adapter", "gidm+adapter", "all")},
        "figure4": {f"{100 * f:g}%": (replace(ft, data=replace(ft.data, episode_fraction=f)),
                                      shared("defi") if f == 1.0 else root / "figure4" / f"{100 * f:g}%")
                    for f in sorted(cfg.fractions)},
    }
    if "table7" in cfg.tables:
        rows_of["table7"] = {}
        for name in ("mlp", "transformer"):
            idm_dir = _pretrain_variant_idm(demo, name, root / "table7" / f"gidm-{name}")
            rows_of["table7"][name] = (replace(ft, idm=str(idm_dir)), root / "table7" / name)
        rows_of["table7"]["vq"] = (ft, shared("defi"))

    result: dict[str, Any] = {"demo_dir": str(demo_dir), "finetune_steps": ft.trainer.max_steps,
                              "episodes_per_task": ft.eval.episodes_per_task, "tasks": list(ft.eval.tasks),
                              "tables": {}}
    for table in cfg.tables:
        paper = PAPER[table]
        rows = {name: _run_row(row_ft, run_dir) for name, (row_ft, run_dir) in rows_of[table].items()}
        order = paper["order"]
        names = dict(paper["names"])
        if table == "figure4":
            keys = list(rows)  # ascending fractions: more data should not do worse
            order = [(keys[i + 1], keys[i]) for i in range(len(keys) - 1)]
            names = {k: f"{k} of the demos" for k in keys}
        result["tables"][table] = {
            "title": paper["title"], "paper_metric": paper["metric"], "paper": paper["rows"], "names": names,
            "rows": rows, "verdicts": [verdict(a, b, rows, names) for a, b in order if a in rows and b in rows]}
        _write(root, result)
    return result


def _check_same_budget(cfg: AblateConfig, path: Path) -> None:
    """Finished rows are reused, which is only honest when they were trained and evaluated with the same budget
    (which tables and fractions are asked for may change between calls)."""
    from defi.config import save_config
    from defi.errors import ConfigError

    changed = changed_settings(cfg, path, ignore=("tables", "fractions"))
    if changed:
        raise ConfigError(f"{path}: the ablation rows here were made with other settings (differs in: "
                          f"{', '.join(changed)}); delete {path.parent} to start the ablations over")
    save_config(cfg, path)


def _write(root: Path, result: dict[str, Any]) -> None:
    (root / "ablate.json").write_text(json.dumps(result, indent=2) + "\n")
    (root / "ablate.md").write_text(ablation_markdown(result) + "\n")


def run(cfg: AblateConfig) -> dict[str, Any]:
    """Run (or reuse) every row of the requested tables; prints and writes ablate.json / ablate.md."""
    result = ablate(cfg)
    print(ablation_markdown(result))
    print(f"wrote {Path(cfg.demo_dir) / 'ablate' / 'ablate.json'} and ablate.md")
    return result
