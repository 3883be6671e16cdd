"""The frozen-feature cache in finetuning: the frozen GFDM / frame encoder run once per clip, with the same loss as
uncached."""

import copy
import json

import pytest
import torch
from torch.utils.data import Subset, default_collate

from defi.config import replace
from defi.data import DataConfig, build_clip_dataset
from defi.errors import DefiError
from defi.train import finetune as finetune_stage
from defi.train.feature_cache import CachedDataset, build_feature_cache
from defi.train.finetune import FinetuneConfig, build_policy


def tiny(tmp_path, store, **changes):
    cfg = FinetuneConfig.preset("tiny")
    cfg = replace(cfg, run_dir=tmp_path / "run", evaluate=False,
                  data=replace(DataConfig.preset("tiny"), sources=[(str(store), 1.0)], val_fraction=0.25))
    return replace(cfg, **changes)


def policy_and_data(tmp_path, store, trainable="gidm+adapter"):
    cfg = tiny(tmp_path, store)
    cfg = replace(cfg, defi=replace(cfg.defi, trainable=trainable))
    torch.manual_seed(0)
    policy, data_cfg = build_policy(cfg)
    train = build_clip_dataset(data_cfg, "train")
    policy.normalizer.set_stats({"action": train.action_stats, "observation.state": train.state_stats})
    return policy, train


def cache_of(policy, dataset, **kw):
    return build_feature_cache(policy.frozen_features, dataset, progress=False, **kw)


class FirstClips(Subset):
    """The first clips of a split (the cache build costs ~0.1 s per clip on this CPU), attributes kept."""

    def __getattr__(self, name):
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@pytest.fixture(scope="module")
def frozen_policy(tmp_path_factory, policy_store):
    return policy_and_data(tmp_path_factory.mktemp("cache"), policy_store)


def uncached(batch):
    return {k: v for k, v in batch.items() if not k.startswith("cache.")}


def test_cached_loss_equals_uncached_and_matches_batch_one_features(frozen_policy):
    policy, train = frozen_policy
    # built in batches of 3, used in a batch of 8: a clip's features must not depend on its batch position
    train = Subset(train, range(8))
    cache = cache_of(policy, train, batch_size=3)
    store = cache.features
    assert set(store) == {"current_tokens", "gfdm.future", *(f"gfdm.{n}" for n in policy.config.video_former.layers)}
    assert all(t.dtype == torch.float16 for t in store.values())
    cached = CachedDataset(cache, train)
    batch = default_collate([cached[i] for i in range(8)])
    policy.train()
    state = copy.deepcopy(policy.state_dict())  # a training forward moves the GIDM's EMA codebook
    torch.manual_seed(1)
    loss_cached = policy(batch)["loss"]
    policy.load_state_dict(state)
    torch.manual_seed(1)
    loss_plain = policy(uncached(batch))["loss"]
    torch.testing.assert_close(loss_cached, loss_plain, rtol=2e-3, atol=1e-4)
    # what inference computes (batch 1, no cache) is what was cached for that clip
    one = default_collate([train[5]])
    feats = policy.frozen_features(one)
    for name, value in feats.items():
        torch.testing.assert_close(value[0], store[name][5].float(), rtol=2e-3, atol=2e-3)


def count_gfdm_batches(monkeypatch) -> list[int]:
    """Finetuning on the first 12 clips of each split, recording the batch size of every GFDM one-step call."""
    import defi.policies.defi.modeling_defi as modeling_defi

    calls = []
    original = modeling_defi.one_step

    def counting(model, images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(modeling_defi, "one_step", counting)
    build = finetune_stage.build_clip_dataset
    monkeypatch.setattr(finetune_stage, "build_clip_dataset", lambda cfg, split: FirstClips(build(cfg, split), range(12)))
    return calls


def test_cached_finetune_trains_without_running_the_frozen_gfdm(tmp_path, policy_store, monkeypatch):
    calls = count_gfdm_batches(monkeypatch)
    cfg = tiny(tmp_path, policy_store, val_batches=0)
    cfg = replace(cfg, trainer=replace(cfg.trainer, max_steps=20, log_every=1, checkpoint_every=100, lr=3e-3))
    finetune_stage.run(cfg)
    # the GFDM ran only to build the cache (batches of <= 64 clips), never on a training batch of 4
    assert calls and all(n != cfg.trainer.batch_size for n in calls[:-1])
    losses = [r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_training_gfdm_caches_only_the_frame_encoder(tmp_path, policy_store, frozen_policy):
    policy, train = policy_and_data(tmp_path, policy_store, trainable="gfdm+adapter")
    train = Subset(train, range(4))
    cache = cache_of(policy, train)
    assert set(cache.features) == {"current_tokens"}
    batch = default_collate([CachedDataset(cache, train)[i] for i in range(4)])
    policy.train()
    policy(batch)["loss"].backward()
    # the GFDM ran in the graph (its gradients are still zero at step 0: the MLP and adapter outputs start at 0)
    assert any(p.grad is not None for p in policy.gfdm.parameters())
    frozen, _ = frozen_policy
    gfdm_cache = cache_of(frozen, train)
    batch = default_collate([CachedDataset(gfdm_cache, train)[i] for i in range(4)])
    with pytest.raises(DefiError, match="trains the GFDM"):
        policy(batch)


def test_cache_over_the_memory_limit_is_refused_with_the_estimate(frozen_policy):
    policy, train = frozen_policy
    with pytest.raises(DefiError, match=r"GiB, over the limit of 1e-06 GiB"):
        cache_of(policy, Subset(train, range(2)), max_gib=1e-6)


def test_random_shift_finetune_runs_the_frozen_parts_on_every_training_batch(tmp_path, policy_store, monkeypatch,
                                                                             capsys):
    calls = count_gfdm_batches(monkeypatch)
    cfg = tiny(tmp_path, policy_store, val_batches=0)
    cfg = replace(cfg, defi=replace(cfg.defi, random_shift=2),
                  trainer=replace(cfg.trainer, max_steps=5, log_every=1, checkpoint_every=100))
    finetune_stage.run(cfg)
    assert "no feature cache: random_shift=2" in capsys.readouterr().out
    # no cache build: the GFDM ran once per training step, on the training batch
    assert calls[:5] == [cfg.trainer.batch_size] * 5
