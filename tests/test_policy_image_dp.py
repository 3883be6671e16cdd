"""Image-conditioned diffusion-policy baseline: trainer contract, learning, units, checkpoints, input errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from defi.config import from_dict, to_dict
from defi.errors import ConfigError, DefiError, ShapeError
from defi.models.layers import random_shift
from defi.policies.image_dp import ImageDPConfig, ImageDPPolicy

ACTION_STATS = {"min": [-2.0, -1.0, 0.0, -1.0], "max": [2.0, 1.0, 4.0, 1.0]}
STATE_STATS = {"min": [-1.0, -1.0, -1.0], "max": [1.0, 1.0, 3.0]}


def make_model(state_dim: int = 3) -> ImageDPPolicy:
    torch.manual_seed(0)
    model = ImageDPPolicy(dataclasses.replace(ImageDPConfig.preset("tiny"), state_dim=state_dim))
    model.normalizer.set_stats({"action": ACTION_STATS, "observation.state": STATE_STATS if state_dim else None})
    return model


def make_batch(model: ImageDPPolicy, batch: int = 4, seed: int = 0) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    size, horizon = cfg.image_size, cfg.action_horizon
    low, high = torch.tensor(ACTION_STATS["min"]), torch.tensor(ACTION_STATS["max"])
    return {
        "images": torch.randint(0, 256, (batch, len(cfg.cameras), 3, size, size), dtype=torch.uint8, generator=g),
        "actions": low + (high - low) * torch.rand(batch, horizon, 4, generator=g),
        "action_mask": torch.ones(batch, horizon, dtype=torch.bool),
        "state": torch.rand(batch, cfg.state_dim, generator=g),
        "instruction": [f"pick block number {i}" for i in range(batch)],
    }


def test_trainer_contract_and_the_loss_goes_down():
    model = make_model()
    batch = make_batch(model)
    out = model(batch)
    assert set(out) == {"loss"} and out["loss"].shape == ()
    stem_before = model.encoder.stem[0].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, fused=True)
    torch.manual_seed(0)
    losses = []
    for _ in range(200):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20, losses
    # the image encoder learns too (its gradient opens once the zero-initialised cross-attention output moves)
    assert not torch.allclose(model.encoder.stem[0].weight, stem_before)


def test_chunks_are_in_dataset_units_and_round_trip(tmp_path):
    model = make_model()
    for p in model.adapter.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model.eval()
    batch = make_batch(model, batch=2)
    chunk = model.predict_action_chunk(batch, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, model.config.action_horizon, 4)
    low, high = torch.tensor(ACTION_STATS["min"]), torch.tensor(ACTION_STATS["max"])
    assert ((chunk >= low - 1e-5) & (chunk <= high + 1e-5)).all()  # clipped in [-1, 1], then unnormalised

    model.save_pretrained(tmp_path / "baseline")
    loaded = ImageDPPolicy.from_pretrained(tmp_path / "baseline").eval()
    assert loaded.config == model.config
    again = loaded.predict_action_chunk(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunk, again)


def test_state_is_optional():
    model = make_model(state_dim=0)
    batch = make_batch(model)
    batch.pop("state")
    assert torch.isfinite(model(batch)["loss"])
    assert model.adapter.config.global_cond_dim == model.config.instruction_dim


def test_random_shift_moves_whole_pixels_and_only_in_training():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    assert torch.equal(random_shift(images, 0), images)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    # every output pixel is an input pixel of the same image (a translation with replicated borders)
    for n in range(2):
        assert set(shifted[n].flatten().tolist()) <= set(images[n].flatten().tolist())
    model = make_model().eval()
    frames = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encoder(frames), model.encoder(frames))


def test_bad_inputs_and_configs_are_user_errors():
    model = make_model()
    batch = make_batch(model, batch=2)
    with pytest.raises(ShapeError, match="uint8"):
        model({**batch, "images": batch["images"].float()})
    with pytest.raises(ShapeError, match="cameras"):
        model({**batch, "images": torch.cat([batch["images"]] * 2, dim=1)})
    with pytest.raises(ShapeError, match="state_dim"):
        model({**batch, "state": torch.zeros(2, 7)})
    with pytest.raises(DefiError, match="no statistics"):
        ImageDPPolicy(dataclasses.replace(ImageDPConfig.preset("tiny"), state_dim=3))(batch)
    data = to_dict(ImageDPConfig.preset("tiny"))
    data["instruction_dim"] = 99  # the text encoder gives 384-wide embeddings
    data["state_dim"] = 3
    wrong = ImageDPPolicy(from_dict(ImageDPConfig, data))
    wrong.normalizer.set_stats({"action": ACTION_STATS, "observation.state": STATE_STATS})
    with pytest.raises(ShapeError, match="instruction_dim"):
        wrong(batch)
    with pytest.raises(ConfigError, match=r"encoder\.token_grid"):
        from_dict(ImageDPConfig, {"encoder": {"token_grid": 0}})


class ClipDataset(torch.utils.data.Dataset):
    """Clip items shaped like defi.data's."""

    def __init__(self, model: ImageDPPolicy, n: int = 8):
        self.batch = make_batch(model, batch=n, seed=1)

    def __len__(self) -> int:
        return len(self.batch["instruction"])

    def __getitem__(self, i: int) -> dict:
        return {key: value[i] for key, value in self.batch.items()}


def test_runs_under_the_shared_trainer_and_saves(tmp_path):
    from defi.train.trainer import Trainer, TrainerConfig

    model = make_model()
    cfg = TrainerConfig(max_steps=6, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=3, log_every=3,
                        ema_decay=0.9, mixed_precision="no", progress=False)
    result = Trainer(cfg, tmp_path / "run", model, ClipDataset(model)).fit()
    assert result["step"] == 6 and math.isfinite(result["loss"])
    model.save_pretrained(tmp_path / "run" / "model")
    loaded = ImageDPPolicy.from_pretrained(tmp_path / "run" / "model")
    assert torch.equal(loaded.normalizer.fields["action"].max, torch.tensor(ACTION_STATS["max"]))


def test_traced_inference_gives_the_same_actions(monkeypatch):
    monkeypatch.setattr("defi.models.traced.TRACE_AFTER", 0)  # trace at the first call
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    plain = model.fork()
    plain.traced_inference = False
    for b in (1, 3):
        batch = make_batch(model, batch=b)
        noise = torch.randn(b, model.config.action_horizon, 4, generator=torch.Generator().manual_seed(b))
        ref = plain.predict_action_chunk(batch, noise=noise)
        for _ in range(2):
            torch.testing.assert_close(model.predict_action_chunk(batch, noise=noise), ref, rtol=1e-4, atol=1e-5)


def test_sampler_override_on_a_fork_leaves_the_policy_alone():
    model = make_model().eval()
    batch = make_batch(model, batch=2)
    noise = torch.randn(2, model.config.action_horizon, 4, generator=torch.Generator().manual_seed(0))
    default = model.predict_action_chunk(batch, noise=noise)
    fast = model.fork()
    fast.sampler, fast.sampling_steps = "dpm_solver", 5
    assert fast.metadata.sampling_steps == 5 and model.metadata.sampling_steps == model.config.adapter.num_sampling_steps
    other = fast.predict_action_chunk(batch, noise=noise)
    assert other.shape == default.shape and not torch.allclose(other, default)
    torch.testing.assert_close(model.predict_action_chunk(batch, noise=noise), default)
    fast.sampler = "euler"
    with pytest.raises(ConfigError, match="sampler 'euler'"):
        fast.predict_action_chunk(batch, noise=noise)
