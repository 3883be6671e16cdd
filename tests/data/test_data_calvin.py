"""The CALVIN split reader on a tiny split in CALVIN's published layout (tests/calvin_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calvin_helpers import ANNOTATIONS, RANGES, frame_arrays, write_calvin_split
from defi.errors import DefiError


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

    from defi.data.config import build_clip_dataset, data_calvin_tiny

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

    from dataclasses import replace

    from defi.data.config import calvin_sources

    mixed = build_clip_dataset(replace(cfg, sources=calvin_sources(calvin_root, play=True)), "all")
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


def test_data_configs_are_valid():
    from defi.config import validate_config
    from defi.data.config import data_calvin_paper, data_calvin_pretrain_paper

    for cfg in (data_calvin_paper("/data/task_ABC_D"), data_calvin_pretrain_paper("/data/task_ABC_D")):
        validate_config(cfg)
        assert cfg.cameras == ("static", "gripper") and cfg.action_dim == 7 and cfg.state_dim == 15
        assert cfg.interval_s == 1.0 and cfg.image_size == 256
    assert data_calvin_paper("/data/task_ABC_D").sources == [("/data/task_ABC_D/training/lang_annotations", 1.0)]
    assert data_calvin_pretrain_paper("/d").sources == [("/d/training/lang_annotations", 1.0), ("/d/training", 1.0)]
    assert data_calvin_paper().sources == [("data/calvin/task_ABC_D/training/lang_annotations", 1.0)]


def test_stage_presets_train_on_calvin_at_the_papers_sizes():
    """`--preset calvin-paper` of the three stages (issue 16 item 3): CALVIN's views, 7-d actions, ~1 s at 30 Hz,
    the paper's model sizes; the split root is the one flag to change."""
    from defi.cli import parse
    from defi.experiments.compare import CompareConfig
    from defi.train.finetune import FinetuneConfig
    from defi.train.pretrain_fdm import PretrainFDMConfig
    from defi.train.pretrain_idm import PretrainIDMConfig

    play = [("data/calvin/task_ABC_D/training/lang_annotations", 1.0), ("data/calvin/task_ABC_D/training", 1.0)]
    fdm = PretrainFDMConfig.preset("calvin-paper")
    assert fdm.model == PretrainFDMConfig.preset("paper").model and fdm.data.sources == play
    assert fdm.data.cameras == ("static", "gripper") and (fdm.data.image_size, fdm.data.future_frames) == (256, 16)
    idm = PretrainIDMConfig.preset("calvin-paper")
    assert idm.model.camera == "static" and idm.data.cameras == ("static",) and idm.data.sources == play
    assert idm.data.interval_s == 1.0 and idm.data.action_horizon == 30  # the probe target spans o_t -> o_t+30
    ft = FinetuneConfig.preset("calvin-paper")
    assert not ft.evaluate and ft.data.sources == play[:1] and ft.run_dir.name == "calvin"
    d = ft.defi
    assert (d.cameras, d.inverse.camera, d.state_dim, d.action_dim, d.image_size) == (("static", "gripper"),
                                                                                       "static", 0, 7, 256)
    assert d.forward == fdm.model and d.inverse == idm.model
    assert "calvin-paper" not in CompareConfig.preset_names()  # compare evaluates on Meta-World only
    for stage in ("pretrain-fdm", "pretrain-idm", "finetune"):
        _, cfg = parse([stage, "--preset", "calvin-paper", "--data.sources", "/d/training", "1.0"])
        assert cfg.data.sources == [("/d/training", 1.0)]


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


def test_data_info_summarises_a_split_in_place(calvin_root, capsys):
    from defi.cli import main

    assert main(["data", "info", str(calvin_root / "training" / "lang_annotations")]) == 0
    out = capsys.readouterr().out
    assert "source       calvin" in out and "episodes     3" in out and "disk         n/a (read in place)" in out
    assert "lift_red_block_table (1)" in out and "observation.images.gripper [84, 84, 3]" in out
