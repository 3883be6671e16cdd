"""The clip sampler: item shapes and masks, interval conversion per fps, determinism, splits, DataLoader,
mixtures and their proportions, DataConfig."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from defi.config import ConfigError, from_dict, validate_config
from defi.data import DataConfig, build_clip_dataset
from defi.data.clips import ClipDataset, split_episodes, subsample_episodes
from defi.data.mixture import MixtureDataset
from defi.data.store import EpisodeStore
from defi.errors import DefiError


def test_item_shapes_masks_and_contents(mw_store):
    ds = ClipDataset(mw_store, cameras=("corner", "gripperPOV"), interval_s=0.1, future_frames=4, future_stride=2,
                     action_horizon=6)
    store = EpisodeStore.open(mw_store)
    assert ds.goal_offset == 8  # 0.1 s at 80 fps
    length = store.episodes[0]["length"]
    assert len(ds) == store.num_frames
    item = ds[0]
    assert item["images"].shape == (2, 3, 64, 64) and item["images"].dtype == torch.uint8
    assert item["goal_images"].shape == (2, 3, 64, 64)
    assert item["future_images"].shape == (2, 4, 3, 64, 64)
    assert item["actions"].shape == (6, 4) and item["actions"].dtype == torch.float32
    assert item["state"].shape == (4,) and item["has_actions"]
    assert item["future_mask"].all() and item["action_mask"].all()
    assert item["instruction"] == store.episodes[0]["task"] and item["source"] == "metaworld"
    corner = store.read(0, "observation.images.corner")
    wrist = store.read(0, "observation.images.gripperPOV")
    np.testing.assert_array_equal(item["images"][0].permute(1, 2, 0).numpy(), corner[0])
    np.testing.assert_array_equal(item["images"][1].permute(1, 2, 0).numpy(), wrist[0])
    np.testing.assert_array_equal(item["goal_images"][0].permute(1, 2, 0).numpy(), corner[8])
    np.testing.assert_array_equal(item["future_images"][0, 3].permute(1, 2, 0).numpy(), corner[8])
    np.testing.assert_array_equal(item["actions"].numpy(), store.read(0, "action")[:6])
    # the last frame but two: futures and actions run past the end
    t = length - 3
    end = ds[t]
    assert int(end["frame_index"]) == t and int(end["episode_index"]) == 0
    assert end["future_mask"].tolist() == [True, False, False, False]  # t+2 <= last, t+4.. past it
    assert end["action_mask"].tolist() == [True, True, True, False, False, False]
    assert end["actions"][3:].abs().sum() == 0
    np.testing.assert_array_equal(end["goal_images"][0].permute(1, 2, 0).numpy(), corner[-1])  # clamped
    np.testing.assert_array_equal(end["future_images"][0, 3].permute(1, 2, 0).numpy(), corner[-1])
    # the next index starts the next episode
    nxt = ds[length]
    assert int(nxt["episode_index"]) == 1 and int(nxt["frame_index"]) == 0
    # deterministic per index, including paraphrased instructions
    para = ClipDataset(mw_store, cameras=("corner",), paraphrase=True, seed=3)
    assert para[5]["instruction"] == para[5]["instruction"]
    assert len({para[i]["instruction"] for i in range(0, 60)}) > 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_interval_is_converted_per_source_fps(mw_store, video_store):
    assert ClipDataset(mw_store, interval_s=1.0).goal_offset == 80
    vid = ClipDataset(video_store, cameras=("corner",), interval_s=0.5, future_frames=2, action_horizon=3)
    assert vid.goal_offset == 5  # 0.5 s at 10 fps
    item = vid[0]
    frames = vid.store.read(0, "observation.images.main")
    np.testing.assert_array_equal(item["goal_images"][0].permute(1, 2, 0).numpy(), frames[5])
    assert not item["has_actions"] and not item["action_mask"].any()


def test_views_resize_and_missing_camera(mw_store):
    ds = ClipDataset(mw_store, cameras=("gripperPOV",), image_size=32, future_frames=2)
    item = ds[3]
    assert item["images"].shape == (1, 3, 32, 32) and item["future_images"].shape == (1, 2, 3, 32, 32)
    with pytest.raises(DefiError, match="has no camera 'topview'.*corner, gripperPOV"):
        ClipDataset(mw_store, cameras=("topview",))


def test_split_by_episode():
    train = split_episodes(10, "train", 0.2, seed=0)
    val = split_episodes(10, "val", 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert set(train) | set(val) == set(range(10))
    np.testing.assert_array_equal(val, split_episodes(10, "val", 0.2, seed=0))
    with pytest.raises(DefiError, match="split 'test'"):
        split_episodes(10, "test", 0.2, 0)


def test_episode_fraction_keeps_nested_per_task_subsets(mw_store):
    records = [{"task": t} for t in ["a"] * 10 + ["b"] * 10 + ["c"] * 1]
    ids = np.arange(21)
    half, fifth = subsample_episodes(records, ids, 0.5, 0), subsample_episodes(records, ids, 0.2, 0)
    tasks = lambda kept: [records[i]["task"] for i in kept]  # noqa: E731
    assert tasks(half).count("a") == 5 and tasks(half).count("b") == 5 and tasks(half).count("c") == 1
    assert tasks(fifth).count("a") == 2 and tasks(fifth).count("c") == 1  # every task keeps at least one
    assert set(fifth) <= set(half)  # smaller fractions are subsets of larger ones
    np.testing.assert_array_equal(half, subsample_episodes(records, ids, 0.5, 0))
    with pytest.raises(DefiError, match="episode_fraction"):
        subsample_episodes(records, ids, 0.0, 0)
    # through the config: only the train split shrinks
    full = DataConfig(sources=[(str(mw_store), 1.0)], future_frames=2, action_horizon=4, val_fraction=0.25)
    some = DataConfig(**{**full.__dict__, "episode_fraction": 0.5})
    n_full = len(build_clip_dataset(full, "train").episode_ids)
    assert len(build_clip_dataset(some, "train").episode_ids) < n_full
    assert len(build_clip_dataset(some, "val")) == len(build_clip_dataset(full, "val"))
    with pytest.raises(ConfigError, match="episode_fraction"):
        validate_config(DataConfig(episode_fraction=1.5))


def test_build_clip_dataset_dataloader_and_stats(mw_store):
    cfg = DataConfig(sources=[(str(mw_store), 1.0)], cameras=("corner",), future_frames=3, action_horizon=4,
                     val_fraction=0.25)
    train, val = build_clip_dataset(cfg, "train"), build_clip_dataset(cfg, "val")
    train_eps = {int(train[i]["episode_index"]) for i in range(0, len(train), 7)}
    val_eps = {int(val[i]["episode_index"]) for i in range(0, len(val), 7)}
    assert len(val_eps) == 1 and not train_eps & val_eps
    loader = DataLoader(train, batch_size=8, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["images"].shape == (8, 1, 3, 64, 64) and batch["future_images"].shape == (8, 1, 3, 3, 64, 64)
    assert batch["actions"].shape == (8, 4, 4) and isinstance(batch["instruction"], list)
    store = EpisodeStore.open(mw_store)
    actions = np.concatenate([store.read(i, "action") for i in range(4)])
    np.testing.assert_allclose(train.action_stats["mean"].numpy(), actions.mean(0), atol=1e-5)
    assert set(train.state_stats) == {"mean", "std", "min", "max"}


def test_mixture_proportions_and_stats(mw_store, video_store):
    robot = ClipDataset(mw_store, cameras=("corner",), future_frames=2, action_horizon=4, image_size=32)
    human = ClipDataset(video_store, cameras=("corner",), future_frames=2, action_horizon=4)
    mix = MixtureDataset([robot, human], [1.0, 3.0])
    assert len(mix) == len(robot) + len(human) and mix.sample_weights.shape == (len(mix),)
    assert mix.expected_proportions() == {mix.names[0]: 0.25, mix.names[1]: 0.75}
    realised = mix.realised_proportions(mix.sample_indices(8000, seed=0))
    assert abs(realised[mix.names[0]] - 0.25) < 0.02 and abs(realised[mix.names[1]] - 0.75) < 0.02
    # the trainer's sampler honours sample_weights the same way
    from itertools import islice

    from defi.train.trainer import ResumableBatchSampler

    sampler = ResumableBatchSampler(len(mix), batch_size=100, seed=0, weights=mix.sample_weights)
    drawn = [i for batch in islice(iter(sampler), 60) for i in batch]
    assert abs(mix.realised_proportions(drawn)[mix.names[1]] - 0.75) < 0.03
    # action statistics come from the labeled source only
    torch.testing.assert_close(mix.action_stats["mean"], robot.action_stats["mean"])
    item = mix[len(robot)]
    assert item["source"] == "videos" and not item["has_actions"]
    with pytest.raises(DefiError, match="weights"):
        MixtureDataset([robot, human], [1.0, 0.0])
    cfg = DataConfig(sources=[(str(mw_store), 1.0), (str(video_store), 1.0)], cameras=("corner",), image_size=32,
                     future_frames=2, action_horizon=4, val_fraction=0.0)
    built = build_clip_dataset(cfg, "train")
    assert isinstance(built, MixtureDataset) and built[0]["images"].shape == (1, 3, 32, 32)


def test_data_config_validation():
    with pytest.raises(ConfigError, match="interval_s"):
        from_dict(DataConfig, {"interval_s": 0.0})
    cfg = from_dict(DataConfig, {"sources": [["a", 2.0], ["b", 1.0]]})
    assert cfg.sources == [("a", 2.0), ("b", 1.0)]
    with pytest.raises(ConfigError, match="sources"):
        from_dict(DataConfig, {"sources": [["a", -1.0]]})
    assert DataConfig.preset_names() == ("tiny", "small", "paper")
    for name in DataConfig.preset_names():
        validate_config(DataConfig.preset(name))
