"""GFDM: shapes, eq. (3) training, one-step features, Video Former, the svd backend's real-weights path, errors."""

from __future__ import annotations

import json

import pytest
import torch

from defi.config import from_dict, to_dict
from defi.errors import CheckpointError, ConfigError, ShapeError
from defi.models.forward import (
    FastOneStep,
    ForwardDynamicsConfig,
    ForwardDynamicsModel,
    VideoFormer,
    build_forward_model,
    one_step,
    sample_future,
    video_former_config,
)


def tiny() -> ForwardDynamicsConfig:
    return ForwardDynamicsConfig.preset("tiny")


def tiny_svd() -> ForwardDynamicsConfig:
    return ForwardDynamicsConfig.preset("tiny-svd")

B, V, L = 2, 2, 5


def clip_batch(cfg: ForwardDynamicsConfig, batch: int = B, views: int = V, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    s, f = cfg.image_size, cfg.num_frames
    return {
        "images": torch.randint(0, 256, (batch, views, 3, s, s), generator=g, dtype=torch.uint8),
        "future_images": torch.randint(0, 256, (batch, views, f, 3, s, s), generator=g, dtype=torch.uint8),
        "future_mask": torch.ones(batch, f, dtype=torch.bool),
        "instruction_tokens": torch.randn(batch, L, cfg.text_dim, generator=g),
    }


def moving_square_clip(cfg: ForwardDynamicsConfig) -> dict:
    """One clip whose future is a square sliding right: learnable motion, not noise."""
    s, f = cfg.image_size, cfg.num_frames
    frames = torch.full((f + 1, 3, s, s), 40, dtype=torch.uint8)
    for k in range(f + 1):
        frames[k, :, 8:16, 4 + 4 * k : 12 + 4 * k] = 230
    return {
        "images": frames[0][None, None],
        "future_images": frames[1:][None, None],
        "future_mask": torch.ones(1, f, dtype=torch.bool),
        "instruction_tokens": torch.randn(1, L, cfg.text_dim, generator=torch.Generator().manual_seed(1)),
    }




@pytest.fixture(scope="module")
def tiny_model() -> ForwardDynamicsModel:
    torch.manual_seed(0)
    return ForwardDynamicsModel(tiny())


def test_presets_validate_and_round_trip():
    for name in ForwardDynamicsConfig.preset_names():
        cfg = ForwardDynamicsConfig.preset(name)
        assert from_dict(ForwardDynamicsConfig, to_dict(cfg)) == cfg, name
    assert ForwardDynamicsConfig.preset("paper").backend == "svd" and ForwardDynamicsConfig.preset("paper").image_size == 256
    assert ForwardDynamicsConfig.preset("paper").num_frames == 16


@pytest.mark.parametrize(
    "change, key",
    [
        ({"unet": {"num_attention_heads": [3, 4]}}, "unet.num_attention_heads"),
        ({"features": {"layers": ["decoder.7"]}}, "features.layers"),
        ({"latent_downsample": 5}, "latent_downsample"),
        ({"noise": {"prediction_type": "x0"}}, "noise.prediction_type"),
        ({"unet": {"block_size": 3}}, "unet.block_size"),
        ({"backend": "compact", "pretrained": "some/dir"}, "pretrained"),
    ],
)
def test_bad_config_names_the_key(change, key):
    data = to_dict(tiny())
    for k, v in change.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(ForwardDynamicsConfig, data)


def test_loss_sample_and_feature_shapes(tiny_model):
    cfg = tiny_model.config
    batch = clip_batch(cfg)
    out = tiny_model(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    video = sample_future(tiny_model, batch["images"], batch["instruction_tokens"], num_steps=2)
    assert video.shape == (B, V, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert video.min() >= -1 - 1e-4 and video.max() <= 1 + 1e-4
    feats = one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    side = cfg.latent_side
    assert set(feats) == {"mid_block", "up_blocks.0", "latents"}
    # views are folded into the batch: n = B * V
    assert feats["mid_block"].shape == (B * V, cfg.num_frames, 64, side // 2, side // 2)
    assert feats["up_blocks.0"].shape == (B * V, cfg.num_frames, 64, side, side)
    assert feats["latents"].shape == (B * V, cfg.num_frames, cfg.latent_channels, side, side)
    assert tiny_model.config.feature_channels() == {"mid_block": 64, "up_blocks.0": 64}


def test_one_step_fraction_trains_at_the_one_step_timestep(monkeypatch):
    from defi.config import replace

    model = ForwardDynamicsModel(tiny())
    seen = []
    add_noise = model.noise_scheduler.add_noise

    def record(target, noise, timesteps):
        seen.append(timesteps.clone())
        return add_noise(target, noise, timesteps)

    monkeypatch.setattr(model.noise_scheduler, "add_noise", record)
    model(clip_batch(model.config, batch=8))
    assert (seen[-1] != model.one_step_timestep).any()  # uniform by default
    model.config = replace(model.config, noise=replace(model.config.noise, one_step_fraction=1.0))
    model(clip_batch(model.config, batch=8))
    assert (seen[-1] == model.one_step_timestep).all()
    with pytest.raises(ConfigError, match="one_step_fraction"):
        replace(model.config.noise, one_step_fraction=1.5).validate()


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_zero_terminal_snr_hides_the_target_at_the_one_step_timestep(sampler):
    """The noisiest training input must be noise alone, as the one-step features' input is; otherwise the model
    learns to read the leaked target (scaled_linear keeps sqrt(alpha_bar) ~ 0.07 of it at the last step)."""
    from defi.config import replace

    base = tiny()
    target = torch.randn(2, base.num_frames, base.latent_channels, base.latent_side, base.latent_side)
    noise = torch.randn_like(target)
    for zero_snr in (False, True):
        noise_cfg = replace(base.noise, prediction_type="sample", sampler=sampler, zero_terminal_snr=zero_snr)
        model = ForwardDynamicsModel(replace(base, noise=noise_cfg))
        last = torch.full((2,), model.one_step_timestep)
        noisy = model.noise_scheduler.add_noise(target, noise, last)
        leak = torch.nn.functional.cosine_similarity(noisy.flatten(), target.flatten(), dim=0)
        if zero_snr:
            assert torch.allclose(noisy, noise, atol=1e-3) and abs(float(leak)) < 0.05
        else:
            assert float(leak) > 0.05  # the flaw the option removes is real in the default schedule
    # the sampler and the one-step features run from that schedule
    batch = clip_batch(model.config)
    video = sample_future(model, batch["images"], batch["instruction_tokens"], num_steps=3)
    feats = one_step(model, batch["images"], batch["instruction_tokens"])
    assert torch.isfinite(video).all() and torch.isfinite(feats["latents"]).all()
    assert torch.isfinite(model(batch)["loss"])
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        replace(base.noise, prediction_type="epsilon", zero_terminal_snr=True).validate()


def test_future_mask_excludes_frames_past_the_episode_end(tiny_model):
    cfg = tiny_model.config
    batch = clip_batch(cfg)
    mask = batch["future_mask"].clone()
    mask[:, -1] = False
    outputs = []

    def keep_output(_module, _inputs, output):
        output.sample.retain_grad()
        outputs.append(output.sample)

    handle = tiny_model.unet.register_forward_hook(keep_output)
    try:
        loss = tiny_model.diffusion_loss(batch["images"], batch["future_images"], batch["instruction_tokens"], mask)
        loss["loss"].backward()
    finally:
        handle.remove()
        tiny_model.zero_grad()
    grad = outputs[0].grad  # [n f C h w]
    assert grad[:, -1].abs().sum() == 0
    assert (grad[:, :-1].abs().sum(dim=(2, 3, 4)) > 0).all()


def test_one_step_features_are_deterministic_and_follow_the_instruction(tiny_model):
    cfg = tiny_model.config
    batch = clip_batch(cfg)
    a = one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    b = one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    other = one_step(tiny_model, batch["images"], batch["instruction_tokens"].flip(0))
    assert torch.equal(a["up_blocks.0"], b["up_blocks.0"])
    assert not torch.allclose(a["up_blocks.0"], other["up_blocks.0"])
    # exactly one UNet call
    calls = []
    handle = tiny_model.unet.register_forward_hook(lambda *_: calls.append(1))
    one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    handle.remove()
    assert len(calls) == 1
    with pytest.raises(ConfigError, match="features.layers"):
        one_step(tiny_model, batch["images"], batch["instruction_tokens"], layers=("up_blocks.9",))


@pytest.mark.parametrize("preset, traced", [("tiny", (False, True, True)), ("tiny-svd", (False,))])
def test_fast_one_step_equals_one_step(preset, traced, monkeypatch):
    """The inference path (constants once, merged cross-attention, traced or not) gives one_step's values."""
    monkeypatch.setattr("defi.models.traced.TRACE_AFTER", 0)  # trace at the first call
    torch.manual_seed(0)
    model = ForwardDynamicsModel(ForwardDynamicsConfig.preset(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every layer away from its initialisation
    images = clip_batch(model.config)["images"]  # 2 clips x 2 views
    words = ["push the puck to the goal", "open the drawer"]
    fast = FastOneStep(model)

    def check() -> None:
        with torch.no_grad():
            ref = one_step(model, images, words)
            out = fast(images, words)
            assert set(out) == set(ref)
            for name in ref:
                torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=1e-5)
            for mode in traced:  # the second call of a trace runs TorchScript's optimised plan
                feats, future, hidden = fast.features(images, words, view=1, frame=-1, traced=mode)
                torch.testing.assert_close(future, ref["latents"].unflatten(0, (B, V))[:, 1, -1], rtol=1e-4,
                                           atol=1e-5)
                torch.testing.assert_close(fast.latents(hidden), ref["latents"], rtol=1e-4, atol=1e-5)
                for name in feats:
                    torch.testing.assert_close(feats[name], ref[name], rtol=1e-4, atol=1e-5)

    check()
    # constants and keys/values derive from the weights: an in-place update must rebuild them
    with torch.no_grad():
        model.text_proj.bias.add_(1.0)
        model.unet.conv_in.weight.mul_(1.5)
    check()
    # outside a FastOneStep call the processors compute the keys/values themselves, as in training
    assert all(processor.kv is None for _, processor in fast.cross)


def test_video_former_turns_features_into_fixed_tokens(tiny_model):
    cfg = tiny_model.config
    batch = clip_batch(cfg)
    feats = one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    former = VideoFormer(video_former_config(tiny_model.config, dim=32, num_queries=3, depth=2, heads=4))
    tokens = former(feats)
    assert tokens.shape == (B * V, cfg.num_frames * 3, 32)
    tokens.square().mean().backward()
    assert all(p.grad is not None for p in former.parameters())
    # every frame's features reach every output token (spatial then temporal attention)
    first_frame_only = {k: v.clone() for k, v in feats.items()}
    first_frame_only["mid_block"][:, 0] += 1.0
    delta = (former(first_frame_only) - tokens).abs().sum(-1)
    assert (delta > 0).all()
    with pytest.raises(ShapeError, match="up_blocks.0"):
        former({**feats, "up_blocks.0": feats["up_blocks.0"][:, :, :8]})


def test_tiny_compact_model_overfits_one_clip():
    torch.manual_seed(0)
    cfg = tiny()
    model = ForwardDynamicsModel(cfg)
    clip = moving_square_clip(cfg)
    args = (clip["images"], clip["future_images"], clip["instruction_tokens"], clip["future_mask"])

    def fixed_loss() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return sum(float(model.diffusion_loss(*args, generator=g)["loss"]) for _ in range(8)) / 8

    before = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(60):
        loss = model.diffusion_loss(*args)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)  # measured: 1.13 -> 0.57


def test_compact_save_and_load_round_trip(tmp_path, tiny_model):
    batch = clip_batch(tiny_model.config)
    tiny_model.save_pretrained(tmp_path / "fdm")
    loaded = ForwardDynamicsModel.from_pretrained(tmp_path / "fdm")
    a = one_step(tiny_model, batch["images"], batch["instruction_tokens"])
    b = one_step(loaded, batch["images"], batch["instruction_tokens"])
    assert torch.equal(a["up_blocks.0"], b["up_blocks.0"])


def save_tiny_svd_checkpoint(directory, cfg):
    """Write a randomly initialised tiny SVD in the diffusers layout of stable-video-diffusion-img2vid-xt."""
    torch.manual_seed(7)
    source = ForwardDynamicsModel(cfg)
    source.unet.save_pretrained(directory / "unet")
    source.latents.vae.save_pretrained(directory / "vae")
    return source


def test_svd_backend_trains_extracts_and_loads_pretrained_weights(tmp_path):
    cfg = tiny_svd()
    source = save_tiny_svd_checkpoint(tmp_path / "svd", cfg)
    cfg.pretrained = str(tmp_path / "svd")
    model = build_forward_model(cfg)
    for name, tensor in source.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    for name, tensor in source.latents.vae.state_dict().items():
        assert torch.equal(model.latents.vae.state_dict()[name], tensor), name
    # the VAE stays frozen; the UNet and the text projection train
    assert not any(p.requires_grad for p in model.latents.vae.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    out = model(clip_batch(cfg, batch=1))
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))
    batch = clip_batch(cfg)
    feats = one_step(model, batch["images"], batch["instruction_tokens"])
    side = cfg.latent_side
    assert feats["up_blocks.0"].shape == (B * V, cfg.num_frames, 64, side, side)
    video = sample_future(model, batch["images"], batch["instruction_tokens"], num_steps=2)
    assert video.shape == (B, V, cfg.num_frames, 3, cfg.image_size, cfg.image_size)


def test_svd_missing_or_mismatched_weights_raise_checkpoint_error(tmp_path):
    cfg = tiny_svd()
    cfg.pretrained = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere.*unet"):
        build_forward_model(cfg)
    save_tiny_svd_checkpoint(tmp_path / "svd", tiny_svd())
    wider = tiny_svd()
    wider.unet.block_out_channels = (64, 64)
    wider.pretrained = str(tmp_path / "svd")
    with pytest.raises(CheckpointError, match="does not match config key unet"):
        build_forward_model(wider)


def test_paper_config_builds_on_meta_device():
    with torch.device("meta"):
        model = ForwardDynamicsModel(ForwardDynamicsConfig.preset("paper"))
    count = sum(p.numel() for p in model.parameters())
    assert 1.4e9 < count < 1.8e9  # SVD-xt unet (~1.52B) + temporal-decoder VAE (~98M) + text projection


def test_config_json_is_plain(tmp_path):
    cfg = tiny()
    text = json.dumps(to_dict(cfg))
    assert "mid_block" in text
