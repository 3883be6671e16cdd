import json

import pytest

from defi.config import replace
from defi.data import DataConfig
from defi.errors import DefiError
from defi.policies import load_policy
from defi.train import finetune as finetune_stage
from defi.train.finetune import FinetuneConfig

finetune = finetune_stage.run


def data_tiny() -> DataConfig:
    return DataConfig.preset("tiny")


def tiny(tmp_path, store, **changes) -> FinetuneConfig:
    cfg = FinetuneConfig.preset("tiny")
    cfg = replace(cfg, run_dir=tmp_path / "run", data=replace(data_tiny(), sources=[(str(store), 1.0)], val_fraction=0.25))
    return replace(cfg, **changes)


def test_finetune_trains_saves_and_evaluates(tmp_path, policy_store, policy_type="defi"):
    cfg = tiny(tmp_path, policy_store, policy_type=policy_type)
    metrics = finetune(cfg)
    run = cfg.run_dir
    assert (run / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert metrics["train"]["loss"] > 0 and "val_action_mse" in metrics["held_out"]
    assert metrics["stage"] == "finetune" and metrics["closed_loop"]["overall"]["episodes"] == 1
    assert json.loads((run / "metrics.json").read_text())["data"]["train_clips"] == metrics["data"]["train_clips"]
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    assert ev["overall"]["episodes"] == 1 and "pc_success" in ev["per_task"]["reach-v3"]
    assert list((run / "eval" / "videos").glob("*.mp4"))
    policy = load_policy(run)  # the saved policy comes back through the registry, normalisation included
    assert policy.metadata.policy_type == policy_type


def test_finetune_rejects_action_free_data_and_bad_runs(tmp_path, policy_store):
    with pytest.raises(DefiError, match="expected a pretrain-fdm run directory"):
        finetune(tiny(tmp_path, policy_store, fdm=str(tmp_path / "nothing")))


def test_compare_runs_variants_writes_report_and_reuses_finished_runs(tmp_path, policy_store, capsys):
    from defi.experiments.compare import CompareConfig, compare

    cfg = CompareConfig(run_dir=tmp_path / "cmp", variants=("image_dp",), finetune=tiny(tmp_path, policy_store))
    results = compare(cfg)
    assert set(results) == {"image_dp"} and results["image_dp"]["overall"]["episodes"] == 1
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| reach-v3 |" in report and "image_dp" in report
    capsys.readouterr()
    compare(cfg)  # finished variants are reused, not retrained
    assert "reusing" in capsys.readouterr().out
    with pytest.raises(DefiError, match="needs --fdm and --idm"):
        compare(CompareConfig(run_dir=tmp_path / "cmp2", variants=("defi",), finetune=tiny(tmp_path, policy_store)))


def test_defi_variant_couples_pretrained_fdm_and_idm_runs(tmp_path, policy_store):
    """Tiny pretrain-fdm and pretrain-idm runs on the store, then finetune loads both into the coupled policy."""
    import torch

    from defi.models.forward import ForwardDynamicsModel
    from defi.models.inverse import GIDM
    from defi.train import pretrain_fdm, pretrain_idm

    data = replace(data_tiny(), sources=[(str(policy_store), 1.0)], val_fraction=0.25, image_size=32)
    fcfg = pretrain_fdm.PretrainFDMConfig.preset("tiny")
    fcfg = replace(fcfg, run_dir=tmp_path / "fdm", data=replace(data, future_frames=fcfg.model.num_frames))
    pretrain_fdm.run(fcfg)
    icfg = replace(pretrain_idm.PretrainIDMConfig.preset("tiny"), run_dir=tmp_path / "idm",
                   data=replace(data, future_frames=1))
    pretrain_idm.run(icfg)

    cfg = tiny(tmp_path, policy_store, fdm=str(tmp_path / "fdm"), idm=str(tmp_path / "idm"), evaluate=False)
    finetune(cfg)
    policy = load_policy(cfg.run_dir)
    gfdm = ForwardDynamicsModel.from_pretrained(tmp_path / "fdm" / "model")
    gidm = GIDM.from_pretrained(tmp_path / "idm" / "model")
    # the GFDM stays frozen (paper §3.3): identical to the pretrained one; the GIDM started from it and trained
    for (name, p), q in zip(policy.gfdm.state_dict().items(), gfdm.state_dict().values()):
        assert torch.equal(p, q), name
    changed = [not torch.equal(p, q) for p, q in zip(policy.gidm.state_dict().values(), gidm.state_dict().values())]
    assert any(changed)
    # the saved GIDM named its encoders and camera: the policy took them from it, not from the stage config
    assert policy.config.inverse.frame_encoder == icfg.model.frame_encoder
    assert policy.config.inverse.camera == "corner"

    # the no-pretraining baseline: same architecture from the runs' configs, random weights
    scratch = replace(cfg, run_dir=tmp_path / "scratch", pretrained_weights=False, trainer=replace(cfg.trainer, max_steps=1))
    finetune(scratch)
    other = load_policy(scratch.run_dir)
    assert other.config.inverse == policy.config.inverse and other.config.forward == policy.config.forward
    assert not torch.equal(other.gfdm.state_dict()["text_proj.weight"], gfdm.state_dict()["text_proj.weight"])
