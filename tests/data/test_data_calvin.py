"""The CALVIN split reader on a tiny split written here in CALVIN's published layout (dataset/README.md):
one compressed npz per step with every array the release has, ep_start_end_ids.npy, scene_info.npy and
lang_annotations/auto_lang_ann.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defi.errors import DefiError

# Two play stretches with a gap in the frame numbering, as the released splits have between recordings.
RANGES = [(0, 39), (100, 159)]
# (start, end, task, instruction): the second window's end is the first frame after its play stretch (the
# annotator writes start + window length), the third sits in the second stretch.
ANNOTATIONS = [
    (5, 25, "open_drawer", "pull the handle to open the drawer"),
    (30, 40, "turn_on_led", "switch on the led"),
    (110, 150, "lift_red_block_table", "grasp and lift the red block"),
]


def frame_arrays(i: int) -> dict[str, np.ndarray]:
    """Frame i's arrays; the images carry i (channel 0: i % 256, channel 1: i // 256) so reads can be checked."""
    static = np.zeros((200, 200, 3), np.uint8)
    static[..., 0], static[..., 1] = i % 256, i // 256
    gripper = np.zeros((84, 84, 3), np.uint8)
    gripper[..., 0], gripper[..., 2] = i % 256, 7
    rel = np.clip(np.array([0.01 * i, -0.02 * i, 0.5, 0.1, -0.1, 0.03 * i, 1.0 if i % 2 else -1.0]), -1, 1)
    return {
        "rgb_static": static,
        "rgb_gripper": gripper,
        "rgb_tactile": np.zeros((160, 120, 6), np.uint8),
        "depth_static": np.zeros((200, 200), np.float32),
        "depth_gripper": np.zeros((84, 84), np.float32),
        "depth_tactile": np.zeros((160, 120, 2), np.float32),
        "actions": np.array([0.1 * i, 0.2, 0.5, 3.1, 0.0, 1.5, rel[6]], np.float32),
        "rel_actions": rel.astype(np.float32),
        "robot_obs": np.arange(15, dtype=np.float32) + i,
        "scene_obs": np.full(24, -i, np.float32),
    }


def write_calvin_split(split: Path) -> Path:
    split.mkdir(parents=True)
    for start, end in RANGES:
        for i in range(start, end + 1):
            np.savez_compressed(split / f"episode_{i:07d}.npz", **frame_arrays(i))
    np.save(split / "ep_start_end_ids.npy", np.array(RANGES))
    np.save(split / "scene_info.npy", {"calvin_scene_B": [0, 59], "calvin_scene_C": [60, 159]})
    lang = split / "lang_annotations"
    lang.mkdir()
    np.save(lang / "auto_lang_ann.npy", {
        "language": {"ann": [a[3] for a in ANNOTATIONS], "task": [a[2] for a in ANNOTATIONS],
                     "emb": np.zeros((len(ANNOTATIONS), 1, 384), np.float32)},
        "info": {"episodes": [], "indx": [(a[0], a[1]) for a in ANNOTATIONS]},
    })
    return split


@pytest.fixture(scope="module")
def calvin_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calvin") / "task_tiny"
    write_calvin_split(root / "training")
    return root


def test_path_convention_selects_the_view(calvin_root):
    from defi.data.sources import open_source
    from defi.data.sources.calvin import CalvinSource, detect_calvin

    split = calvin_root / "training"
    assert detect_calvin(split) and detect_calvin(split / "lang_annotations")
    assert detect_calvin(split / "lang_annotations" / "auto_lang_ann.npy")
    assert not detect_calvin(calvin_root) and not detect_calvin(split / "episode_0000000.npz")
    play = open_source(split)
    lang = open_source(split / "lang_annotations")
    by_file = open_source(split / "lang_annotations" / "auto_lang_ann.npy")
    assert isinstance(play, CalvinSource) and play.mode == "play" and not play.info.has_actions
    assert lang.mode == by_file.mode == "lang" and lang.info.has_actions
    assert lang.root == play.root == split


def test_play_stream_is_action_free_video_of_every_range(calvin_root):
    from defi.data.sources.calvin import CalvinSource

    src = CalvinSource(calvin_root / "training")
    assert [(e["start"], e["end"], e["length"]) for e in src.episodes] == [(0, 39, 40), (100, 159, 60)]
    assert [e["task"] for e in src.episodes] == ["", ""]
    assert [e.get("scene") for e in src.episodes] == ["calvin_scene_B", "calvin_scene_C"]
    info = src.info
    assert info.fps == 30 and info.cameras == ["static", "gripper"] and info.image_size == [200, 200]
    assert set(info.features) == {"observation.images.static", "observation.images.gripper"}
    assert info.features["observation.images.gripper"]["shape"] == [84, 84, 3]
    assert info.total_frames == 100 and src.stats() == {}
    static = src.read(1, "observation.images.static", np.array([0, 59, 3]))
    assert static.shape == (3, 200, 200, 3)
    assert static[:, 0, 0, 0].tolist() == [100, 159, 103]
    out = np.empty((2, 84, 84, 3), np.uint8)
    src.read(0, "observation.images.gripper", np.array([1, 2]), out=out)
    assert out[:, 0, 0, 0].tolist() == [1, 2] and (out[..., 2] == 7).all()
    with pytest.raises(DefiError, match="no feature 'action'"):
        src.read_episode(0, "action")


def test_annotated_windows_are_labeled_episodes(calvin_root):
    from defi.data.sources.calvin import CalvinSource

    src = CalvinSource(calvin_root / "training" / "lang_annotations")
    # inclusive ends as CALVIN's loader reads them; the window that runs past its stretch stops at frame 39
    assert [(e["start"], e["end"], e["length"]) for e in src.episodes] == [(5, 25, 21), (30, 39, 10), (110, 150, 41)]
    assert [e["task_name"] for e in src.episodes] == [a[2] for a in ANNOTATIONS]
    assert [e["task"] for e in src.episodes] == [a[3] for a in ANNOTATIONS]
    assert src.info.features["action"]["shape"] == [7] and src.info.features["observation.state"]["shape"] == [15]
    actions = src.read_episode(2, "action")
    assert actions.dtype == np.float32 and actions.shape == (41, 7)
    np.testing.assert_allclose(actions, np.stack([frame_arrays(i)["rel_actions"] for i in range(110, 151)]))
    assert set(np.unique(actions[:, 6]).tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(src.read_episode(0, "observation.state")[3], np.arange(15) + 8)
    np.testing.assert_array_equal(src.read(0, "observation.environment_state", np.array([0])), [np.full(24, -5)])
    assert src.read(1, "observation.images.static", np.array([9]))[0, 0, 0, 0] == 39
    absolute = CalvinSource(calvin_root / "training" / "lang_annotations", actions="abs")
    np.testing.assert_allclose(absolute.read_episode(0, "action")[0], frame_arrays(5)["actions"])


def test_stats_cover_the_labeled_frames(calvin_root):
    from defi.data.sources.calvin import CalvinSource

    src = CalvinSource(calvin_root / "training" / "lang_annotations")
    # fewer labeled frames than the sample size: the statistics are exact over the distinct labeled frames
    frames = sorted({i for e in src.episodes for i in range(e["start"], e["end"] + 1)})
    rel = np.stack([frame_arrays(i)["rel_actions"] for i in frames]).astype(np.float64)
    stats = src.stats()
    assert set(stats) == {"action", "observation.state"}
    assert set(stats["action"]) == {"mean", "std", "min", "max"}
    np.testing.assert_allclose(stats["action"]["mean"], rel.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["action"]["std"], rel.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["min"], np.arange(15) + 5)


def test_opening_reads_one_frame_file(calvin_root, monkeypatch):
    from defi.data.sources import calvin

    opened: list[str] = []
    real_load = np.load

    def counting_load(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(calvin.np, "load", counting_load)
    calvin.CalvinSource(calvin_root / "training" / "lang_annotations")
    assert [n for n in opened if n.endswith(".npz")] == ["episode_0000005.npz"]
    assert sorted(n for n in opened if n.endswith(".npy")) == ["auto_lang_ann.npy", "ep_start_end_ids.npy",
                                                                "scene_info.npy"]


def test_clip_sampler_resizes_each_view_and_mixes_both_views(calvin_root):
    import torch

    from defi.data.config import build_clip_dataset
    from defi.data.sources.calvin import data_calvin_tiny

    cfg = data_calvin_tiny(calvin_root)
    ds = build_clip_dataset(cfg, "all")
    assert len(ds) == 21 + 10 + 41 and ds.goal_offset == 30  # ~1 s at 30 Hz
    item = ds[int(ds._starts[2]) + 4]  # window 2 (frames 110..150), t = 4 -> frame 114
    assert item["images"].shape == (2, 3, 32, 32) and item["images"].dtype == torch.uint8
    assert item["images"][0, 0].unique().tolist() == [114] and item["images"][1, 2].unique().tolist() == [7]
    assert item["goal_images"][0, 0, 0, 0].item() == 144  # t + 30
    assert item["instruction"] == ANNOTATIONS[2][3] and item["source"] == "calvin"
    np.testing.assert_allclose(item["actions"].numpy(), [frame_arrays(i)["rel_actions"] for i in range(114, 118)])
    np.testing.assert_array_equal(item["state"].numpy(), np.arange(15) + 114)
    assert ds.action_stats["mean"].shape == (7,) and ds.state_stats["std"].shape == (15,)

    from defi.data.sources.calvin import data_calvin_pretrain_paper
    from dataclasses import replace

    mixed = build_clip_dataset(replace(cfg, sources=data_calvin_pretrain_paper(calvin_root).sources), "all")
    assert mixed.names == ["calvin:lang_annotations", "calvin:training"]
    play_item = mixed[len(mixed.datasets[0]) + 45]  # play stretch 2, t = 5 -> frame 105
    assert not play_item["has_actions"] and play_item["instruction"] == ""
    assert play_item["images"][0, 0].unique().tolist() == [105] and not play_item["action_mask"].any()


def test_views_of_different_sizes_need_an_image_size(calvin_root):
    from defi.data.clips import ClipDataset

    with pytest.raises(DefiError, match="different sizes"):
        ClipDataset(calvin_root / "training", cameras=("static", "gripper"), image_size=None)
    native = ClipDataset(calvin_root / "training", cameras=("gripper",), image_size=None)
    assert native[0]["images"].shape == (1, 3, 84, 84)


def test_presets_are_valid_configs():
    from defi.config import validate_config
    from defi.data.sources.calvin import data_calvin_paper, data_calvin_pretrain_paper

    for cfg in (data_calvin_paper("/data/task_ABC_D"), data_calvin_pretrain_paper("/data/task_ABC_D")):
        validate_config(cfg)
        assert cfg.cameras == ("static", "gripper") and cfg.action_dim == 7 and cfg.state_dim == 15
        assert cfg.interval_s == 1.0 and cfg.image_size == 256
    assert data_calvin_paper("/data/task_ABC_D").sources == [("/data/task_ABC_D/training/lang_annotations", 1.0)]
    assert data_calvin_pretrain_paper("/d").sources == [("/d/training/lang_annotations", 1.0), ("/d/training", 1.0)]


def test_bad_inputs_name_the_file_and_what_was_expected(tmp_path):
    from defi.data.sources.calvin import CalvinSource

    split = write_calvin_split(tmp_path / "training")
    ann = split / "lang_annotations" / "auto_lang_ann.npy"

    np.save(ann, {"language": {"ann": ["a", "b"], "task": ["t"]}, "info": {"indx": [(0, 3), (4, 9)]}})
    with pytest.raises(DefiError, match=r"auto_lang_ann.npy: expected as many annotations as tasks and ranges"):
        CalvinSource(split / "lang_annotations")
    np.save(ann, {"language": {"ann": ["a"]}})
    with pytest.raises(DefiError, match=r"auto_lang_ann.npy: expected a dict with \['language'\]\['ann'\]"):
        CalvinSource(split / "lang_annotations")

    np.save(split / "ep_start_end_ids.npy", np.array([1, 2, 3]))
    with pytest.raises(DefiError, match=r"ep_start_end_ids.npy: expected a non-empty integer array"):
        CalvinSource(split)
    np.save(split / "ep_start_end_ids.npy", np.array(RANGES))

    arrays = frame_arrays(7)
    del arrays["rgb_gripper"]
    np.savez_compressed(split / "episode_0000007.npz", **arrays)
    play = CalvinSource(split)
    with pytest.raises(DefiError, match=r"episode_0000007.npz: no array 'rgb_gripper'"):
        play.read(0, "observation.images.gripper", np.array([7]))
    arrays = frame_arrays(8)
    arrays["rgb_static"] = np.zeros((100, 100, 3), np.uint8)
    np.savez_compressed(split / "episode_0000008.npz", **arrays)
    with pytest.raises(DefiError, match=r"episode_0000008.npz: rgb_static has shape \[100, 100, 3\], expected "
                                        r"\[200, 200, 3\]"):
        play.read(0, "observation.images.static", np.array([8]))
    (split / "episode_0000009.npz").unlink()
    with pytest.raises(DefiError, match=r"episode_0000009.npz: missing CALVIN frame file"):
        play.read(0, "observation.images.static", np.array([9]))
    with pytest.raises(DefiError, match="not a CALVIN split"):
        CalvinSource(tmp_path)
