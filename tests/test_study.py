"""`defi study` end to end at the `tiny` preset: pretraining once, every arm x seed run, the paired analysis."""

from __future__ import annotations

import json

import pytest

from defi.config import replace
from defi.experiments.study import StudyConfig, analyse, markdown, run, run_config


@pytest.mark.slow
def test_tiny_study_runs_every_arm_and_seed_and_reports_paired_differences(tmp_path):
    # two workers: pretraining and the runs that need no pretrained model share one process pool
    cfg = replace(StudyConfig.preset("tiny"), run_dir=tmp_path / "study", demo_counts=(2,), train_seeds=(0, 1),
                  workers=2)
    run(cfg)
    stages = json.loads((tmp_path / "study" / "stages.json").read_text())
    assert {"gfdm", "gidm", "demos2/seed1/defi", "training", "report"} <= set(stages)
    result = json.loads((tmp_path / "study" / "study.json").read_text())
    row = result["by_demos"]["2"]
    assert set(row["arms"]) == {"defi", "defi-scratch", "image_dp"}
    for entry in row["arms"].values():
        assert entry["overall"]["episodes"] == 2 * 2  # 1 task x 2 episodes x 2 seeds
        assert entry["vision_reliance"]["pairs"] == 4 and entry["seeds"] == [0, 1]
    assert set(row["pairs"]) == {"defi - defi-scratch", "defi - image_dp", "defi-scratch - image_dp"}
    assert row["pairs"]["defi - defi-scratch"]["pooled"]["pairs"] == 4
    assert (tmp_path / "study" / "study_data_efficiency.png").stat().st_size > 1000
    assert "vision reliance" in (tmp_path / "study" / "study.md").read_text()
    # every arm was evaluated on the same episodes (positions and sampling seeds)
    from defi.experiments.study import run_dir_of

    resolved = replace(cfg, run_dir=tmp_path / "study")
    seeds = {arm: [(e["task"], e["seed"]) for e in json.loads(
        (run_dir_of(resolved, 2, 0, arm) / "eval" / "metrics.json").read_text())["episodes"]]
        for arm in ("defi", "image_dp")}
    assert seeds["defi"] == seeds["image_dp"]
    # a second call reuses everything; the analysis is a pure function of the runs
    run(cfg)
    assert "DeFI (pretrained)" in markdown(analyse(cfg))


def test_run_configs_pick_nested_demo_subsets_and_the_seed():
    cfg = replace(StudyConfig.preset("tiny"), demo_counts=(1, 2), train_seeds=(3,))
    one, two = run_config(cfg, 1, 3, "defi-scratch"), run_config(cfg, 2, 3, "defi-scratch")
    assert one.data.episode_fraction == 0.5 and two.data.episode_fraction == 1.0
    assert one.data.seed == 3 and one.trainer.seed == 3 and one.data.val_fraction == 0.0
    assert one.policy_type == "defi" and not one.pretrained_weights
    assert run_config(cfg, 1, 3, "image_dp").policy_type == "image_dp"


def test_training_schedule_pretrains_first_and_defi_runs_wait_for_both_models(tmp_path, monkeypatch):
    import defi.experiments.study as study

    cfg = study.resolve(replace(StudyConfig.preset("tiny"), run_dir=tmp_path / "s", demo_counts=(1, 2),
                                train_seeds=(0,), workers=1))
    jobs = {j.name: j for j in study.training_jobs(cfg)}
    assert jobs["demos1/seed0/defi"].needs == ("gfdm", "gidm") and jobs["demos1/seed0/image_dp"].needs == ()
    # no-pretraining builds the same architecture from the pretrained runs' saved configs
    assert jobs["demos1/seed0/defi-scratch"].needs == ("gfdm", "gidm")
    order, logged = [], []

    def fake_job(args):
        _, job = args
        order.append(job.name)
        return job.name, {}, 0.0

    monkeypatch.setattr(study, "_job_main", fake_job)
    study.stage_training(cfg, on_done=lambda name, summary, wall: logged.append(name))
    assert order[:2] == ["gfdm", "gidm"] and logged == order and len(order) == 2 + 2 * 3
    # once both models exist, the runs that waited for them come before the image DP runs
    assert order[2:6] == ["demos1/seed0/defi", "demos1/seed0/defi-scratch", "demos2/seed0/defi",
                          "demos2/seed0/defi-scratch"]
    # an image-DP-only study pretrains nothing
    assert [j.kind for j in study.training_jobs(replace(cfg, arms=("image_dp",)))] == ["run"] * 2


_ORPHAN_SCRIPT = """
import multiprocessing as mp, sys, time

def child(path):
    from defi.experiments.study import _exit_with_parent
    _exit_with_parent(poll_s=0.1)
    open(path, "w").write(str(__import__("os").getpid()))
    time.sleep(60)

if __name__ == "__main__":
    mp.get_context("spawn").Process(target=child, args=(sys.argv[1],)).start()
    time.sleep(60)
"""


def test_study_workers_end_when_the_study_process_is_killed(tmp_path):
    """SIGKILL/SIGTERM reach only the study process; its job processes must not train on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    deadline = time.time() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(child, 0)  # alive while the parent is
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the worker outlived the study process")


def test_a_config_field_added_since_a_run_was_made_does_not_block_resuming_it(tmp_path):
    from defi.config import save_config
    from defi.experiments.demo.config import changed_settings

    cfg = StudyConfig.preset("tiny")
    path = save_config(cfg, tmp_path / "config.json")
    saved = json.loads(path.read_text())
    del saved["corpus"]["action_noise_correlation"]  # as written before the field existed
    path.write_text(json.dumps(saved))
    assert changed_settings(cfg, path) == []
    assert changed_settings(replace(cfg, corpus=replace(cfg.corpus, action_noise_correlation=0.5)), path) == ["corpus"]
    assert changed_settings(replace(cfg, seed=3), path) == ["seed"]


def test_report_names_the_seeds_of_a_demo_count_run_on_fewer_seeds_than_the_study():
    from defi.eval.stats import summarise

    def arm(seeds):
        s = summarise([True, False])
        return {"overall": s, "per_task": {"reach-v3": s}, "seeds": seeds, "overall_ci_seeds_episodes": [0.1, 0.9]}

    result = {"tasks": ["reach-v3"], "episodes_per_task": 2, "train_seeds": [0, 1, 2], "arms": ["defi", "image_dp"],
              "by_demos": {"2": {"arms": {"defi": arm([0]), "image_dp": arm([0])}, "pairs": {}},
                           "10": {"arms": {"defi": arm([0, 1, 2]), "image_dp": arm([0, 1, 2])}, "pairs": {}}}}
    text = markdown(result)
    assert "### 2 demonstrations per task (training seeds [0] of [0, 1, 2])" in text
    assert "### 10 demonstrations per task\n" in text
