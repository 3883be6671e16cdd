import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defi.errors import CheckpointError, DefiError, TrainingDiverged
from defi.train.trainer import ResumableBatchSampler, Trainer, TrainerConfig, list_checkpoints
from toy import ToyDataset, ToyModel


def tiny_cfg(**kw) -> TrainerConfig:
    base = dict(max_steps=20, batch_size=8, lr=3e-2, warmup_steps=2, checkpoint_every=5, log_every=5,
                ema_decay=0.9, mixed_precision="no", progress=False, seed=3)
    base.update(kw)
    return TrainerConfig(**base)


def make(run_dir, cfg, **model_kw):
    torch.manual_seed(0)
    model = ToyModel(**model_kw)
    return Trainer(cfg, run_dir, model, ToyDataset()), model


def test_loss_goes_down_and_run_dir_is_complete(tmp_path):
    trainer, _ = make(tmp_path, tiny_cfg(max_steps=60, checkpoint_every=20), )
    result = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 5 and records[-1]["step"] == 60
    assert records[-1]["loss"] < 0.2 * records[0]["loss"]
    assert result["samples_per_s"] > 0 and "grad_norm" in records[-1]
    ckpts = list_checkpoints(tmp_path)
    assert [c.name for c in ckpts] == ["step_0000040", "step_0000060"]  # keep_checkpoints=2
    assert (ckpts[-1] / "model.safetensors").is_file()
    assert not list((tmp_path / "checkpoints").glob("tmp-*"))


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    # 2 micro-batches of 4 see the same indices as 1 batch of 8 (world size 1), so the sampler streams agree
    a = ResumableBatchSampler(64, 4, seed=1)
    b = ResumableBatchSampler(64, 8, seed=1)
    assert a.batch_at(0) + a.batch_at(1) == b.batch_at(0)


def test_resume_after_kill_is_bit_identical(tmp_path):
    full, full_model = make(tmp_path / "full", tiny_cfg())
    full.fit()

    killed, _ = make(tmp_path / "killed", tiny_cfg(), crash_at_call=13)  # dies during step 13
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert list_checkpoints(tmp_path / "killed")[-1].name == "step_0000010"
    resumed, resumed_model = make(tmp_path / "killed", tiny_cfg())
    resumed.fit(resume=True)

    for (name, p), q in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name
    assert full_model.seen[10:] == resumed_model.seen  # same batches after the checkpoint
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]  # log reads like one run


def test_checkpoint_round_trip_restores_weights_optimizer_and_ema(tmp_path):
    trainer, model = make(tmp_path, tiny_cfg(max_steps=5))
    trainer.fit()
    # fit leaves EMA weights in the model; the checkpoint holds the raw weights and the EMA separately
    fresh, fresh_model = make(tmp_path, tiny_cfg(max_steps=5))
    fresh.load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert fresh.state.step == 5
    assert fresh.optimizer.state_dict()["state"]  # Adam moments restored
    fresh.ema.copy_to(fresh.trainable)
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    trainer, _ = make(tmp_path, tiny_cfg(), nan_at_call=8)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 8.*step_0000005"):
        trainer.fit()
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step_0000005"]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "diverged"


def test_bad_resume_and_run_dir_errors(tmp_path):
    trainer, _ = make(tmp_path / "a", tiny_cfg(max_steps=5))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer.fit(resume=True)
    trainer.fit()
    again, _ = make(tmp_path / "a", tiny_cfg(max_steps=5))
    with pytest.raises(DefiError, match="already holds checkpoints"):
        again.fit()
    # a truncated weights file is reported as a corrupt checkpoint, naming it
    weights = list_checkpoints(tmp_path / "a")[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    broken, _ = make(tmp_path / "a", tiny_cfg(max_steps=10))
    with pytest.raises(CheckpointError, match="step_0000005.*corrupt"):
        broken.fit(resume=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DefiError, match="not writable"):
        make(blocker / "run", tiny_cfg())


def test_sampler_weights_give_requested_proportions():
    weights = torch.tensor([3.0] * 10 + [1.0] * 30)  # first 10 items carry 50% of the mass
    sampler = ResumableBatchSampler(40, 50, seed=0, weights=weights)
    drawn = [i for b in range(40) for i in sampler.batch_at(b)]
    share = sum(i < 10 for i in drawn) / len(drawn)
    assert abs(share - 0.5) < 0.03
    with pytest.raises(DefiError, match="sample_weights"):
        ResumableBatchSampler(40, 5, seed=0, weights=torch.ones(39))


WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_process_ddp_ranks_agree_and_see_different_data(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                      str(Path(__file__).parent)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[1]["rank"] == 1
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept replicas identical
    for seen0, seen1 in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert not set(seen0) & set(seen1)  # each step the two ranks read different samples
    assert len(list_checkpoints(tmp_path / "run")) >= 1


@pytest.mark.slow
def test_two_process_pretrain_idm_stage_saves_rank_zeros_weights_once(tmp_path, policy_store):
    """The stage contract under DDP: both ranks train the same GIDM, only the main process writes model/ and
    metrics.json, and what it wrote is the weights every rank holds."""
    from safetensors.torch import load_file

    worker = Path(__file__).with_name("ddp_stage_worker.py")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(policy_store), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    for rank in range(2):
        held = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert held.keys() == saved.keys()
        assert all(torch.equal(held[k], saved[k]) for k in saved), rank
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stage"] == "pretrain-idm" and metrics["steps"] == 6
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if ".tmp" in p.name or ".old" in p.name]
    assert not leftovers


def test_bf16_autocast_runs_on_this_device(tmp_path):
    trainer, _ = make(tmp_path, tiny_cfg(max_steps=10, mixed_precision="bf16"))
    assert trainer.accelerator.mixed_precision == "bf16"
    result = trainer.fit()
    assert result["mixed_precision"] == "bf16" and result["loss"] < 10
