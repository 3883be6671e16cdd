import numpy as np
import pytest
import torch

from defi.config import replace
from defi.errors import DefiError
from defi.policies import Policy, load_policy
from defi.policies.defi import DeFIConfig, DeFIPolicy


def policy_tiny() -> DeFIConfig:
    return DeFIConfig.preset("tiny")

STATS = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}


def tiny_batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randint(0, 256, (b, 1, 3, 32, 32), generator=g, dtype=torch.uint8),
        "actions": torch.rand(b, 4, 4, generator=g) * 2 - 1,
        "action_mask": torch.tensor([[True] * 4, [True, True, False, False]][:b]),
        "state": torch.randn(b, 4, generator=g),
        "instruction": ["push the puck to the goal", "open the drawer"][:b],
    }


def warm_up(policy, steps=3):
    # the adapter is adaLN-Zero initialised: its output ignores the condition until the final layer and then the
    # block gates have moved off zero, which takes two optimiser steps
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        policy(tiny_batch())["loss"].backward()
        opt.step()
        policy.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    p = DeFIPolicy(policy_tiny())
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    return p


def test_trainable_parts_follow_table9(policy):
    trainable = {n.split(".")[0] for n, p in policy.named_parameters() if p.requires_grad}
    assert "gfdm" not in trainable and "gidm" in trainable and {"adapter", "video_former", "future_mlp"} <= trainable
    assert not any(p.requires_grad for n, p in policy.gidm.named_parameters() if n.startswith("decoder"))
    p2 = DeFIPolicy(replace(policy_tiny(), trainable="adapter"))
    assert not any(p.requires_grad for p in p2.gidm.parameters())
    p2.train()
    assert not p2.gidm.training and not p2.gfdm.training and p2.adapter.training  # frozen codebook stays put
    p3 = DeFIPolicy(replace(policy_tiny(), trainable="all"))
    assert all(p.requires_grad for p in p3.gfdm.parameters())


def test_loss_backpropagates_into_gidm_not_gfdm(policy):
    policy.train()
    warm_up(policy)
    out = policy(tiny_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.gidm.parameters())
    assert all(p.grad is None for p in policy.gfdm.parameters())
    policy.zero_grad(set_to_none=True)


def test_all_train_reaches_gfdm():
    torch.manual_seed(0)
    p = DeFIPolicy(replace(policy_tiny(), trainable="all"))
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    p.train()
    warm_up(p)
    p(tiny_batch())["loss"].backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.gfdm.parameters())


def test_loss_on_a_fixed_batch_goes_down():
    torch.manual_seed(0)
    p = DeFIPolicy(policy_tiny())
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    batch = tiny_batch()

    def fixed_noise_loss():
        # the same noise and timesteps each time, so the comparison is not drowned by diffusion's sampling noise
        with torch.no_grad():
            actions = p.normalizer.normalize("action", batch["actions"])
            tokens, cond = p.condition(batch)
            return p.adapter.loss(actions, batch["action_mask"], tokens, cond,
                                  generator=torch.Generator().manual_seed(0))["loss"].item()

    before = fixed_noise_loss()
    opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=1e-2)
    for _ in range(30):
        loss = p(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_noise_loss() < 0.8 * before  # measured: 0.686 -> 0.485 after 30 steps


def test_act_save_load_round_trip(policy, tmp_path):
    obs = {"observation.images.corner": np.full((32, 32, 3), 120, np.uint8),
           "observation.state": np.zeros(4, np.float32)}
    torch.manual_seed(5)
    a = policy.act(obs, "push the puck to the goal")
    assert a.shape == (4, 4) and a.dtype == np.float32
    frames = policy.imagined_frames()
    assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8
    policy.save_pretrained(tmp_path / "p")
    # one folder per component, each loadable on its own
    assert {"gfdm", "gidm", "video_former", "adapter"} <= {d.name for d in (tmp_path / "p").iterdir() if d.is_dir()}
    from defi.models.inverse import GIDM

    gidm = GIDM.from_pretrained(tmp_path / "p" / "gidm")
    assert all(torch.equal(x, y) for x, y in zip(gidm.state_dict().values(), policy.gidm.state_dict().values()))
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, Policy) and type(loaded) is DeFIPolicy
    torch.manual_seed(5)
    b = loaded.act(obs, "push the puck to the goal")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert loaded.metadata.action_horizon == 4 and loaded.metadata.image_size == [32, 32]


def test_seeded_episodes_repeat_their_actions(policy):
    obs = {"observation.images.corner": np.full((32, 32, 3), 90, np.uint8),
           "observation.state": np.zeros(4, np.float32)}
    policy.reset(seed=11)
    a = policy.act(obs, "open the drawer")
    torch.manual_seed(123)  # the global RNG does not matter once the episode is seeded
    policy.reset(seed=11)
    np.testing.assert_array_equal(policy.act(obs, "open the drawer"), a)


def test_bad_observations_name_the_key(policy):
    with pytest.raises(DefiError, match="missing 'observation.images.corner'"):
        policy.act({"observation.state": np.zeros(4, np.float32)}, "x")
    with pytest.raises(DefiError, match=r"observation.images.corner: expected uint8 \[32, 32, 3\]"):
        policy.act({"observation.images.corner": np.zeros((64, 64, 3), np.uint8),
                    "observation.state": np.zeros(4, np.float32)}, "x")
    with pytest.raises(DefiError, match="observation.state: expected 4 values"):
        policy.act({"observation.images.corner": np.zeros((32, 32, 3), np.uint8),
                    "observation.state": np.zeros(3, np.float32)}, "x")


def test_inference_path_gives_the_training_path_actions(monkeypatch):
    """The default inference path (FastOneStep, the GIDM's pruned last block, traced graphs) computes the same
    condition tokens, actions and imagined frames as the training path, at batch 1 and 2, and follows weight
    updates."""
    monkeypatch.setattr("defi.models.traced.TRACE_AFTER", 0)  # trace at the first call
    torch.manual_seed(0)
    policy = DeFIPolicy(policy_tiny())
    policy.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))  # off the zero initialisations, so that every part counts
    policy.eval()
    plain = policy.fork()
    plain.fast_gfdm = plain.fast_gidm = plain.traced_inference = False

    def check(sizes) -> None:
        for b in sizes:
            batch = tiny_batch(b, seed=b)
            noise = torch.randn(b, 4, 4, generator=torch.Generator().manual_seed(b))
            with torch.no_grad():
                tokens, cond = policy.condition(batch)
                ref_tokens, ref_cond = plain.condition(batch)
                torch.testing.assert_close(tokens, ref_tokens, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(cond, ref_cond)
                actions = policy.predict_action_chunk(batch, noise=noise)
                ref = plain.predict_action_chunk(batch, noise=noise)
            assert (actions.abs() < 0.99).any()  # not all clipped to the action range
            torch.testing.assert_close(actions, ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.from_numpy(policy.imagined_frames(b - 1)).float(),
                                       torch.from_numpy(plain.imagined_frames(b - 1)).float(), rtol=0, atol=1.0)

    check((1, 2, 2))  # the second call of a graph runs TorchScript's optimised plan
    with torch.no_grad():  # traces and precomputed constants must follow the new weights
        for module in (policy.gfdm, policy.gidm, policy.adapter):
            next(module.parameters()).mul_(1.1)
    check((2,))


def test_random_shift_moves_the_training_images_only_and_turns_the_cache_off(monkeypatch):
    import defi.policies.defi.modeling_defi as modeling_defi

    seen = []
    original = modeling_defi.one_step

    def recording(model, images, *args, **kwargs):
        seen.append(images.clone())
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(modeling_defi, "one_step", recording)
    torch.manual_seed(0)
    p = DeFIPolicy(replace(policy_tiny(), random_shift=2))
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    p.fast_gfdm = False  # evaluation through `one_step` too, so both paths are recorded
    assert p.cacheable_inputs() == ()  # shifted images make the frozen outputs differ every step
    batch = tiny_batch()
    p.train()
    p(batch)
    p(batch)
    first, second = seen[-2], seen[-1]
    assert first.shape == batch["images"].shape and not torch.equal(first, batch["images"])
    assert not torch.equal(first, second)  # a new shift each step
    # a shift is a whole-pixel translation: the interior of the shifted frame is a crop of the original
    b, v, c, h, w = first.shape
    original_frames = batch["images"].reshape(b * v, c, h, w)
    for frame, source in zip(first.reshape(b * v, c, h, w), original_frames):
        assert any(torch.equal(frame[:, 2:-2, 2:-2], source[:, 2 + dy:h - 2 + dy, 2 + dx:w - 2 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    p.eval()
    with torch.no_grad():
        p.condition(batch)
    assert torch.equal(seen[-1], batch["images"])  # evaluation sees the camera as it is
    p.train()
    cached = {**batch, "cache.current_tokens": torch.zeros(2, 4, 8)}
    with pytest.raises(DefiError, match="random_shift=2"):
        p(cached)


def test_gfdm_feature_layers_choose_the_blocks_read_also_from_a_pretrained_gfdm(tmp_path):
    from defi.models.forward import ForwardDynamicsModel

    layers = ("mid_block", "up_blocks.0", "up_blocks.1")
    torch.manual_seed(0)
    gfdm = ForwardDynamicsModel(policy_tiny().forward)  # pretrained with the preset's two layers
    gfdm.save_pretrained(tmp_path / "gfdm")
    config = replace(policy_tiny(), gfdm_feature_layers=layers)
    p = DeFIPolicy.from_pretrained_runs(config, fdm=tmp_path / "gfdm")
    assert p.config.video_former.layers == layers and tuple(p.config.forward.features.layers) == layers
    assert p.config.video_former.in_channels == (64, 64, 32)  # up_blocks.1 is the UNet's first (32-channel) level
    for name, value in gfdm.state_dict().items():  # choosing blocks to read changes no weight
        assert torch.equal(p.gfdm.state_dict()[name], value)
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    assert {f"gfdm.{name}" for name in layers} <= set(p.cacheable_inputs())
    p.train()
    p(tiny_batch())["loss"].backward()
    assert p.video_former.proj[2].weight.grad is not None  # the new block's features reach the loss
    # the policy built directly from the config reads the same blocks; a bad block name is refused by name
    assert DeFIPolicy(config).config.video_former.layers == layers
    with pytest.raises(DefiError, match="up_blocks.7"):
        DeFIPolicy(replace(policy_tiny(), gfdm_feature_layers=("up_blocks.7",)))
