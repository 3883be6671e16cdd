"""LeRobot datasets in and out, checked against LeRobot's own code (`lerobot-dataset`, see lerobot_helpers):
v3.0 written by LeRobot's writer and read by defi; v2.1 laid out by hand, read by defi before and after LeRobot's
v2.1 -> v3.0 converter; defi's v3.0 export opened by LeRobot's metadata and dataset classes; bad inputs; and the
training stages on an imported LeRobot dataset."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lerobot_helpers import (
    FPS,
    TASKS,
    expected_episodes,
    frame_image,
    load_ledataset,
    pyav_decode_frames,
    write_v21,
    write_with_lerobot,
)

from defi.cli import main as defi_main
from defi.data.clips import ClipDataset
from defi.data.sources.lerobot import (
    LeRobotExportConfig,
    LeRobotImportConfig,
    LeRobotSource,
    export_lerobot,
    import_lerobot,
)
from defi.data.store import EpisodeStore, StoreInfo, feature_spec
from defi.errors import DefiError

EPISODES = expected_episodes([12, 15, 14])


@pytest.fixture(scope="module")
def le(tmp_path_factory):
    le = load_ledataset()
    import datasets

    # `datasets` caches the parquet files LeRobot opens as arrow files: keep them out of the home directory.
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf-datasets-cache"))
    yield le
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="module")
def v30(le, tmp_path_factory) -> Path:
    return write_with_lerobot(le, tmp_path_factory.mktemp("lerobot") / "so100", EPISODES)


def importing(path: Path, out: Path, **changes) -> LeRobotImportConfig:
    return LeRobotImportConfig(path=path, out=out, progress=False, **{"size": 0, **changes})


def assert_frames_match(frames: np.ndarray, want: np.ndarray, tol: float = 4.0) -> None:
    """Lossy video: the right frame at each index (red = 8 * frame), the right layout (blue left/right halves)."""
    assert frames.shape == want.shape
    np.testing.assert_allclose(frames[..., 0].mean((1, 2)), want[..., 0].mean((1, 2)), atol=tol)
    assert np.abs(frames.astype(int) - want).mean() < tol


def test_reads_v30_written_by_lerobot(v30):
    source = LeRobotSource(v30)
    assert (source.version, source.fps, source.robot_type) == ("v3.0", FPS, "so100")
    assert source.camera_keys == ["observation.images.front", "observation.images.wrist"]
    assert source.video_keys == ["observation.images.front"]  # the wrist camera is an image (PNG) feature
    for ep, want in zip(source.source_episodes, EPISODES):
        assert ep.length == len(want["frames"]) and ep.tasks == [want["task"]]
        assert_frames_match(source.frames(ep, "observation.images.front"), want["frames"])  # AV1
        np.testing.assert_array_equal(source.frames(ep, "observation.images.wrist"), want["frames"][:, :, ::-1])
        np.testing.assert_array_equal(source.low_dim(ep, "observation.state"), want["state"])
        np.testing.assert_array_equal(source.low_dim(ep, "action"), want["action"])
        assert source.frame_tasks(ep) == [want["task"]] * ep.length
    # the episode store's read interface, episodes out of order (the decoder seeks back in the shared mp4)
    source = LeRobotSource(v30)
    assert source.info.cameras == ["front", "wrist"] and source.info.fps == FPS
    assert [e["task"] for e in source.episodes] == [e["task"] for e in EPISODES]
    for e in (2, 0, 1):
        assert_frames_match(source.read(e, "observation.images.front"), EPISODES[e]["frames"])
    np.testing.assert_array_equal(source.read(1, "action", np.array([0, 3])), EPISODES[1]["action"][[0, 3]])
    small = LeRobotSource(v30, decode_size=16)
    assert small.info.image_size == [16, 16] and small.read(2, "observation.images.wrist", np.arange(3)).shape == (3, 16, 16, 3)


def test_import_maps_cameras_keeps_fps_and_resumes(v30, tmp_path):
    cfg = importing(v30, tmp_path / "store", camera_map=("observation.images.front=corner", "wrist=gripperPOV"))
    report = import_lerobot(cfg)
    assert (report.written, report.frames, report.skipped) == (3, 41, [])
    store = EpisodeStore.open(tmp_path / "store")
    assert store.info.cameras == ["corner", "gripperPOV"] and store.info.image_size == [32, 32]
    assert store.info.fps == FPS and store.info.has_actions and store.info.robot_type == "so100"
    assert [e["task"] for e in store.episodes] == [e["task"] for e in EPISODES]
    for e, want in enumerate(EPISODES):
        np.testing.assert_array_equal(store.read(e, "action"), want["action"])
        np.testing.assert_array_equal(store.read(e, "observation.state"), want["state"])
        np.testing.assert_array_equal(store.read(e, "observation.images.gripperPOV"), want["frames"][:, :, ::-1])
        assert_frames_match(store.read(e, "observation.images.corner"), want["frames"])
    # the clip sampler's interval is in seconds: 0.5 s is 5 frames at this dataset's 10 fps
    clips = ClipDataset(tmp_path / "store", cameras=("corner",), interval_s=0.5, future_frames=2, action_horizon=4,
                        split="all")
    assert clips.goal_offset == 5 and clips[0]["instruction"] == EPISODES[0]["task"]
    again = import_lerobot(cfg)
    assert (again.written, again.existing) == (0, 3)


def test_cli_resizes_and_imports_action_free(v30, tmp_path, capsys):
    out = tmp_path / "videos"
    assert defi_main(["data", "lerobot", str(v30), "--out", str(out), "--size", "16", "--camera-map",
                      "observation.images.front=corner", "wrist=gripperPOV", "--action-free", "--no-progress"]) == 0
    assert "wrote 3 episodes (41 frames" in capsys.readouterr().out
    store = EpisodeStore.open(out)
    assert store.info.cameras == ["corner", "gripperPOV"] and store.info.image_size == [16, 16]
    assert not store.info.has_actions and store.info.source == "lerobot-actionfree"
    assert set(store.info.features) == {"observation.images.corner", "observation.images.gripperPOV"}
    # scaled to 16 x 16: the video still blue on the left half and dark on the right, the mirrored PNGs the other way
    front, wrist = store.read(0, "observation.images.corner"), store.read(0, "observation.images.gripperPOV")
    assert front.shape == wrist.shape == (12, 16, 16, 3)
    assert front[:, :, :6, 2].mean() > 170 and front[:, :, 10:, 2].mean() < 70
    assert wrist[:, :, 10:, 2].mean() > 170 and wrist[:, :, :6, 2].mean() < 70


def test_v21_layout_read_before_and_after_lerobot_converter(le, tmp_path):
    episodes = expected_episodes([9, 11], seed=1)
    root = write_v21(tmp_path / "defi-tests" / "aloha", episodes, fps=30)

    def check(version: str) -> None:
        source = LeRobotSource(root)
        assert (source.version, source.fps, source.robot_type) == (version, 30, "aloha")
        for ep, want in reversed(list(zip(source.source_episodes, episodes))):  # v3.0: seeks back in one mp4
            assert_frames_match(source.frames(ep, "observation.images.top"), want["frames"])
            np.testing.assert_array_equal(source.low_dim(ep, "action"), want["action"])
            np.testing.assert_array_equal(source.low_dim(ep, "observation.state"), want["state"])
            assert source.frame_tasks(ep) == [want["task"]] * ep.length

    check("v2.1")
    # v2.0 has the same layout (its stats.json instead of episodes_stats.jsonl plays no part in reading)
    older = Path(shutil.copytree(root, tmp_path / "v20"))
    info = json.loads((older / "meta" / "info.json").read_text())
    (older / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.0"}))
    assert LeRobotSource(older).version == "v2.0" and import_lerobot(importing(older, tmp_path / "v20-store")).written == 2
    # LeRobot's converter concatenates the per-episode videos and parquet files (it converts root/repo_id in place)
    le.converter.convert_dataset("defi-tests/aloha", root=tmp_path, push_to_hub=False)
    assert sorted(p.name for p in (root / "videos" / "observation.images.top").rglob("*.mp4")) == ["file-000.mp4"]
    check("v3.0")
    report = import_lerobot(importing(root, tmp_path / "store", camera_map=("top=corner",)))
    assert report.written == 2 and EpisodeStore.open(tmp_path / "store").info.fps == 30


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    """A Meta-World-shaped store (80 fps, two 32x32 cameras, every low-dim feature a generated store has)."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("demos") / "store"
    lengths = [30, 26, 28]
    arrays = []
    for e, n in enumerate(lengths):
        frames = np.stack([frame_image(e, i) for i in range(n)])
        arrays.append({"observation.images.corner": frames,
                       "observation.images.gripperPOV": np.ascontiguousarray(frames[:, ::-1]),
                       "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
                       "observation.environment_state": rng.normal(size=(n, 39)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
                       "next.reward": rng.uniform(0, 10, size=n).astype(np.float32),
                       "next.success": np.arange(n) >= n - 3})
    cams = ["corner", "gripperPOV"]
    info = StoreInfo(fps=80.0, cameras=cams, image_size=[32, 32], has_actions=True, source="metaworld",
                     embodiment="sawyer", robot_type="sawyer", features=feature_spec(cams, [32, 32], arrays[0]))
    store = EpisodeStore.create(root, info)
    for e, a in enumerate(arrays):
        store.write_episode(f"reach-{e:05d}", a, {"task": TASKS[e % 2], "task_name": "reach"})
    store.finalize()
    return root


def test_export_opens_with_lerobots_own_readers(le, demo_store, tmp_path, monkeypatch):
    out = tmp_path / "export"
    # tiny file limits: every episode starts a new data file, and the videos span several files too
    report = export_lerobot(LeRobotExportConfig(store=demo_store, out=out, progress=False, data_file_mb=1e-5,
                                                video_file_mb=1e-5))
    assert report.files["data"] == 3 and report.files["video"] > 2 and report.frames == 84
    store = EpisodeStore.open(demo_store)
    cams = ["observation.images.corner", "observation.images.gripperPOV"]

    meta = le.LeRobotDatasetMetadata("defi-tests/export", root=out)
    assert (meta.total_episodes, meta.total_frames, meta.fps, meta.robot_type) == (3, 84, 80, "sawyer")
    assert meta.video_keys == cams and list(meta.tasks.index) == TASKS
    assert meta.features["observation.environment_state"]["shape"] == (39,)
    assert meta.features["observation.images.corner"]["info"]["video.codec"] == "av1"
    np.testing.assert_allclose(meta.stats["action"]["mean"], store.stats()["action"]["mean"], rtol=1e-5, atol=1e-6)
    assert meta.stats["observation.images.corner"]["mean"].shape == (3, 1, 1)
    hf_schema = le.utils.get_hf_features_from_features(meta.features).arrow_schema
    import pyarrow.parquet as pq

    for path in sorted((out / "data").rglob("*.parquet")):
        assert pq.read_schema(path).equals(hf_schema), path

    # LeRobot's dataset class, with only its video decoder (torchcodec / torchvision.io) replaced by PyAV
    monkeypatch.setattr(le.lerobot_dataset, "decode_video_frames", pyav_decode_frames)
    ds = le.LeRobotDataset("defi-tests/export", root=out, video_backend="pyav",
                           delta_timestamps={"observation.images.corner": [0.0, 4 / 80], "action": [0.0, 1 / 80]})
    assert len(ds) == 84 and ds.num_episodes == 3
    for index in (0, 29, 30, 55, 83):
        item = ds[index]
        e, t = int(item["episode_index"]), int(item["frame_index"])
        last = store.episodes[e]["length"] - 1
        assert item["task"] == store.episodes[e]["task"] and abs(float(item["timestamp"]) - t / 80) < 1e-6
        np.testing.assert_array_equal(item["observation.state"].numpy(), store.read(e, "observation.state")[t])
        np.testing.assert_array_equal(item["action"].numpy(), store.read(e, "action")[[t, min(t + 1, last)]])
        for key, wanted in (("observation.images.corner", [t, min(t + 4, last)]), ("observation.images.gripperPOV", [t])):
            got = (item[key].reshape(-1, 3, 32, 32).permute(0, 2, 3, 1).numpy() * 255).round()
            assert_frames_match(got, store.read(e, key)[wanted])

    # and back into defi: every feature survives the round trip
    back = import_lerobot(importing(out, tmp_path / "back"))
    assert back.written == 3
    again = EpisodeStore.open(tmp_path / "back")
    assert again.info.cameras == ["corner", "gripperPOV"] and again.info.fps == 80
    for e in range(3):
        for key in ("action", "observation.state", "observation.environment_state", "next.reward", "next.success"):
            np.testing.assert_array_equal(again.read(e, key), store.read(e, key))
        assert_frames_match(again.read(e, "observation.images.gripperPOV"), store.read(e, "observation.images.gripperPOV"))


def test_export_cli_and_nothing_half_written(demo_store, tmp_path, monkeypatch, capsys):
    from defi.data.sources import lerobot

    assert defi_main(["data", "export-lerobot", str(demo_store), "--out", str(tmp_path / "ok"), "--vcodec", "h264",
                      "--no-progress"]) == 0
    assert "3 episodes, 84 frames, 2 tasks" in capsys.readouterr().out
    with pytest.raises(DefiError, match="already exists"):
        export_lerobot(LeRobotExportConfig(store=demo_store, out=tmp_path / "ok", progress=False))

    calls = []

    def failing_add(self, frames):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, frames)

    original = lerobot._VideoWriter.add
    monkeypatch.setattr(lerobot._VideoWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        export_lerobot(LeRobotExportConfig(store=demo_store, out=tmp_path / "failed", progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]  # no dataset, no temporary directory


def test_bad_inputs_name_the_file_and_episode(demo_store, tmp_path):
    # a truncated data parquet (v3.0): all three episodes live in it
    bad = tmp_path / "truncated"
    export_lerobot(LeRobotExportConfig(store=demo_store, out=bad, progress=False))
    data = bad / "data" / "chunk-000" / "file-000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DefiError, match=r"file-000.parquet \(episode 0\): unreadable data parquet"):
        import_lerobot(importing(bad, tmp_path / "s1"))
    report = import_lerobot(importing(bad, tmp_path / "s1", skip_bad=True))
    assert (report.written, len(report.skipped)) == (0, 3) and "skipped 3 bad episodes" in report.summary()

    # v2.1 (one file per episode): episode 1's video has 2 frames too few, episode 2's 2 too many
    episodes = expected_episodes([8, 9, 10], seed=2)
    root = write_v21(tmp_path / "short", episodes, fps=30, video_frames={1: 7, 2: 12})
    out = tmp_path / "s2"
    with pytest.raises(DefiError, match=r"episode_000001.mp4: episode 1 \(9 frames in its data\) of "
                                        r"observation.images.top: the video ends before frame 7"):
        import_lerobot(importing(root, out))
    assert [e["key"] for e in EpisodeStore.open(out).episodes] == ["episode-000000"]  # only whole episodes
    assert not list((out / "episodes").glob(".tmp-*"))
    report = import_lerobot(importing(root, out, skip_bad=True))
    assert (report.existing, report.written, len(report.skipped)) == (1, 0, 2)
    assert "more frames than the data" in report.skipped[1]

    # a missing video file
    (root / "videos" / "chunk-000" / "observation.images.top" / "episode_000000.mp4").unlink()
    with pytest.raises(DefiError, match=r"episode_000000.mp4: missing video of observation.images.top \(episode 0\)"):
        import_lerobot(importing(root, tmp_path / "s3"))


def test_camera_mismatch_names_both_sides(tmp_path):
    root = write_v21(tmp_path / "aloha", expected_episodes([5, 6]), fps=30)
    with pytest.raises(DefiError, match=r"has no camera 'observation.images.front' \(its camera keys: "
                                        r"observation.images.top; .*corner, gripperPOV"):
        import_lerobot(importing(root, tmp_path / "s", camera_map=("observation.images.front=corner", "top=gripperPOV")))
    import_lerobot(importing(root, tmp_path / "s", size=16))  # no map: cameras keep the dataset's names
    with pytest.raises(DefiError, match=r"store's cameras: top; the policy's: corner, gripperPOV\); .*--camera-map"):
        ClipDataset(tmp_path / "s", cameras=("corner", "gripperPOV"))
    with pytest.raises(DefiError, match=r"is a LeRobot v2.1 dataset; import it once .*defi data lerobot"):
        ClipDataset(root)


@pytest.fixture(scope="module")
def demos(request, tmp_path_factory) -> Path:
    """Demonstrations of a 6-dim robot (SO-101-like: 6 joints, state and action) written by LeRobot's own writer
    where it runs; else in the v2.1 layout, so that the training test does not depend on lerobot-dataset."""
    episodes = expected_episodes([12, 15, 14], seed=4, dim=6)
    root = tmp_path_factory.mktemp("demos") / "so101"
    if importlib.util.find_spec("ledataset") is not None:
        return write_with_lerobot(request.getfixturevalue("le"), root, episodes)
    return write_v21(root, episodes, fps=FPS)


def test_pretrain_idm_and_finetune_on_a_lerobot_dataset(demos, tmp_path):
    """The README's commands ("Train on your LeRobot dataset") at the tiny preset: import the videos alone and the
    demonstrations, pretrain the GIDM on the videos, finetune DeFI on the 6-dim demonstrations."""
    from defi.cli import parse
    from defi.policies import load_policy
    from defi.train import finetune, pretrain_idm

    key = "observation.images.front" if LeRobotSource(demos).version == "v3.0" else "observation.images.top"
    videos, store = tmp_path / "videos", tmp_path / "store"
    assert defi_main(["data", "lerobot", str(demos), "--out", str(videos), "--size", "32", "--action-free",
                      "--camera-map", f"{key}=corner", "--no-progress"]) == 0
    assert defi_main(["data", "lerobot", str(demos), "--out", str(store), "--size", "32",
                      "--camera-map", f"{key}=corner", "--no-progress"]) == 0
    assert EpisodeStore.open(store).info.features["action"]["shape"] == [6]

    _, icfg = parse(["pretrain-idm", "--preset", "tiny", "--data.sources", str(videos), "1.0", "--run-dir",
                     str(tmp_path / "idm"), "--data.val-fraction", "0.34", "--data.future-frames", "1",
                     "--trainer.max-steps", "4"])
    metrics = pretrain_idm.run(icfg)
    assert np.isfinite(metrics["held_out"]["mse"]) and icfg.model.camera == "corner"

    # the robot's sizes: the policy's action and state (the data config follows from the policy)
    _, fcfg = parse(["finetune", "--preset", "tiny", "--idm", str(tmp_path / "idm"), "--data.sources", str(store),
                     "1.0", "--no-evaluate", "--defi.action-dim", "6", "--defi.adapter.action-dim", "6",
                     "--defi.state-dim", "6", "--run-dir", str(tmp_path / "ft"), "--data.val-fraction", "0.34",
                     "--trainer.max-steps", "4"])
    metrics = finetune.run(fcfg)
    assert metrics["train"]["loss"] > 0 and np.isfinite(metrics["held_out"]["val_action_mse"])
    policy = load_policy(tmp_path / "ft")
    meta = policy.metadata
    assert (meta.cameras, meta.action_dim, meta.state_dim) == (["corner"], 6, 6)
