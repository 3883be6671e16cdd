"""`defi demo` end to end at the `tiny` preset (every stage, the report, resuming, config guard), the report's
statistics, and `defi ablate` on the tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defi.config import replace
from defi.errors import ConfigError, DefiError
from defi.eval.stats import difference_interval, verdict
from defi.experiments.demo.config import STAGES, DemoConfig
from defi.experiments.demo.pipeline import run


def preset_tiny() -> DemoConfig:
    return DemoConfig.preset("tiny")


def run_demo(cfg: DemoConfig, redo: tuple[str, ...] = ()):
    return run(replace(cfg, redo=redo))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    run_demo(replace(preset_tiny(), run_dir=run_dir))
    return run_dir


def test_demo_writes_every_stage_and_a_report(tiny_demo):
    stages = json.loads((tiny_demo / "stages.json").read_text())
    assert list(stages) == list(STAGES) and all(s["status"] == "done" for s in stages.values())
    report = json.loads((tiny_demo / "report.json").read_text())
    assert set(report["comparison"]) == {"defi", "defi-scratch", "image_dp"}
    for row in report["comparison"].values():
        assert set(row["per_task"]) == {"reach-v3", "button-press-v3"}
        assert row["overall"]["episodes"] == 2 and 0 <= row["overall"]["ci95_low"] <= row["overall"]["ci95_high"] <= 1
    assert [v["worse"] for v in report["verdicts"]] == ["defi-scratch", "image_dp"]
    assert report["gfdm"]["copy_mse"] > 0 and "probe_r2_latent_action" in report["gidm"]
    assert report["latency"]["one_thread"]["whole_ms"] > 0
    assert report["latent_actions"]["clips"] >= 8
    assert report["environment"]["versions"]["torch"] and report["seeds"]["demo"] == 0
    assert set(report["stages"]) >= {"corpus", "gfdm", "compare"} and report["total_wall_s"] > 0
    for name in ("success.png", "learning_curves.png", "latent_actions.png", "gfdm_predictions.gif"):
        assert (tiny_demo / "assets" / name).stat().st_size > 1000, name
    md = (tiny_demo / "report.md").read_text()
    assert "Did the paper's ordering hold?" in md and "| **all** |" in md and "whole act() step" in md
    page = (tiny_demo / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "data:video/mp4;base64," in page  # self-contained
    assert "<table>" in page


def test_rerun_reuses_finished_stages_and_redo_reruns_later_ones(tiny_demo, capsys):
    cfg = replace(preset_tiny(), run_dir=tiny_demo)
    before = json.loads((tiny_demo / "stages.json").read_text())
    run_demo(cfg)
    out = capsys.readouterr().out
    assert out.count("reused") == len(STAGES) - 1  # everything but the report, which is always rewritten
    after = json.loads((tiny_demo / "stages.json").read_text())
    assert after["compare"] == before["compare"]
    run_demo(cfg, redo=("latents",))
    after = json.loads((tiny_demo / "stages.json").read_text())
    assert after["latents"]["finished"] >= before["latents"]["finished"] and after["compare"] == before["compare"]
    with pytest.raises(ConfigError, match="redo"):
        run_demo(cfg, redo=("nonsense",))


def test_rerun_with_other_settings_is_refused(tiny_demo):
    cfg = preset_tiny()
    cfg = replace(cfg, run_dir=tiny_demo, demos=replace(cfg.demos, episodes_per_task=3))
    with pytest.raises(ConfigError, match="differs in: demos"):
        run_demo(cfg)


def test_difference_interval_and_verdicts():
    d, low, high = difference_interval(9, 10, 1, 10)
    assert d == pytest.approx(0.8) and 0 < low < d < high <= 1
    d, low, high = difference_interval(3, 5, 2, 5)
    assert low < 0 < high  # 60% vs 40% on 5 episodes each is within noise
    rows = {"a": {"overall": {"successes": 9, "episodes": 10, "success_rate": 0.9}},
            "b": {"overall": {"successes": 1, "episodes": 10, "success_rate": 0.1}},
            "c": {"overall": {"successes": 2, "episodes": 10, "success_rate": 0.2}}}
    assert verdict("a", "b", rows)["status"] == "held"
    assert verdict("b", "a", rows)["status"] == "reversed"
    assert verdict("c", "b", rows)["status"] == "held in direction, within noise"
    assert verdict("b", "c", rows)["status"] == "not reproduced (reversed, within noise)"
    assert verdict("b", "b", rows)["status"] == "tie (not reproduced)"


def test_ablate_tables_on_the_tiny_demo(tiny_demo):
    from defi.experiments.demo.ablate import AblateConfig, ablate

    result = ablate(AblateConfig(demo_dir=tiny_demo, tables=("table4", "table7", "figure4"), fractions=(0.5, 1.0)))
    t4 = result["tables"]["table4"]
    assert list(t4["rows"]) == ["none", "gidm_only", "gfdm_only", "both"]
    # rows identical to the demo's own policies reuse its runs; the others are new finetune runs
    assert t4["rows"]["both"]["run_dir"] == str(tiny_demo / "compare" / "defi")
    assert t4["rows"]["none"]["run_dir"] == str(tiny_demo / "compare" / "defi-scratch")
    assert Path(t4["rows"]["gidm_only"]["run_dir"], "metrics.json").is_file()
    assert len(t4["verdicts"]) == 4 and all("status" in v for v in t4["verdicts"])
    t7 = result["tables"]["table7"]
    assert list(t7["rows"]) == ["mlp", "transformer", "vq"]
    mlp_idm = json.loads((tiny_demo / "ablate" / "table7" / "gidm-mlp" / "model" / "config.json").read_text())
    assert mlp_idm["architecture"] == "mlp" and mlp_idm["quantizer"]["kind"] == "continuous"
    f4 = result["tables"]["figure4"]
    assert list(f4["rows"]) == ["50%", "100%"] and f4["verdicts"][0]["better"] == "100%"
    md = (tiny_demo / "ablate" / "ablate.md").read_text()
    assert "Table 4" in md and "Table 7" in md and "GIDM, VQ (ours)" in md and "4.51" in md
    with pytest.raises(DefiError, match="defi demo"):
        ablate(AblateConfig(demo_dir=tiny_demo / "missing"))
    with pytest.raises(ConfigError, match="differs in: finetune_steps"):  # finished rows were made with 10 steps
        ablate(AblateConfig(demo_dir=tiny_demo, tables=("table4",), finetune_steps=7))
    with pytest.raises(DefiError, match="--tasks push-v3"):
        ablate(AblateConfig(demo_dir=tiny_demo, tasks=("push-v3",)))


@pytest.mark.slow
def test_quick_preset_end_to_end_smoke(tmp_path):
    """The `quick` preset as a user runs it (about 5 minutes on a 2-core CPU): every stage at its real sizes."""
    run_dir = tmp_path / "quick"
    run_demo(replace(DemoConfig.preset("quick"), run_dir=run_dir))
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["comparison"]) == {"defi", "defi-scratch", "image_dp"}
    for row in report["comparison"].values():
        assert row["overall"]["episodes"] == 6 and set(row["per_task"]) == {"reach-v3", "button-press-topdown-v3"}
    assert report["gfdm"]["eval_clips"] == 16 and report["gidm"]["codebook_size"] == 128
    assert report["latency"]["one_thread"]["whole_ms"] > 0 and report["latent_actions"]["clips"] == 400
    assert (run_dir / "report.html").stat().st_size > 50_000


def test_full_preset_runs_the_study_regime():
    """`defi demo --preset full` shows the regime `defi study` measured (issue 13): the same tasks, view, models and
    finetuning recipe, no proprio state, and the vision-reliance check; only the budgets are smaller, and with them
    the GIDM's latent-action design is the cheaper VQ one (the study pretrains FSQ for 8000 steps)."""
    from defi.experiments.demo.config import resolve
    from defi.experiments.study import StudyConfig

    demo, study = resolve(DemoConfig.preset("full")), StudyConfig.preset("small")
    assert demo.finetune.eval.tasks == study.finetune.eval.tasks and demo.finetune.eval.vision_check
    assert demo.corpus.cameras == demo.demos.cameras == study.corpus.cameras == ("workspace_close",)
    assert demo.corpus.tasks == study.corpus.tasks and demo.demos.tasks == ",".join(study.finetune.eval.tasks)
    assert demo.finetune.defi == study.finetune.defi and demo.finetune.defi.state_dim == 0
    assert demo.finetune.image_dp == study.finetune.image_dp and demo.finetune.image_dp.state_dim == 0
    assert demo.fdm.model == study.fdm.model
    # the GIDMs differ only in the latent-action design: the same encoders, view, depth and decoder
    assert (demo.idm.model.quantizer.kind, study.idm.model.quantizer.kind) == ("vq", "fsq")
    assert study.idm.pair_shift == 4 and not study.idm.cache_features and demo.idm.cache_features
    assert replace(demo.idm.model, quantizer=study.idm.model.quantizer,
                   num_action_queries=study.idm.model.num_action_queries) == study.idm.model
    assert (study.idm.trainer.max_steps, demo.idm.trainer.max_steps) == (8000, 1500)
    # the same recipe at a third of the steps; only the demo draws training progress bars (the study's scheduler
    # shows its own)
    assert (study.finetune.trainer.max_steps, demo.finetune.trainer.max_steps) == (6000, 2000)
    assert replace(demo.finetune.trainer, progress=False, max_steps=6000) == study.finetune.trainer
