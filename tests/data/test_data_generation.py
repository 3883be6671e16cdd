"""The Meta-World generator: the store it writes, determinism across worker counts, resume after a kill,
action noise and action-free sources."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import TINY_TASKS, tiny_gen_config

from defi.data.sources.metaworld import episode_key, generate_metaworld, rollout
from defi.data.store import EpisodeStore
from defi.errors import ConfigError, DefiError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_store_contents(mw_store):
    store = EpisodeStore.open(mw_store)
    assert [e["key"] for e in store.episodes] == sorted(
        episode_key(t, s) for t in ("reach-v3", "button-press-v3") for s in range(2)
    )
    info = json.loads((mw_store / "meta" / "info.json").read_text())
    assert info["fps"] == 80.0 and info["cameras"] == ["corner", "gripperPOV"] and info["has_actions"]
    assert info["total_episodes"] == 4 and info["total_frames"] == store.num_frames
    # LeRobot feature names
    assert {"observation.images.corner", "observation.images.gripperPOV", "observation.state", "action",
            "next.reward", "next.success"} <= set(info["features"])
    for i, ep in enumerate(store.episodes):
        assert ep["success"] is True and ep["task"] and ep["task_name"] in ("reach-v3", "button-press-v3")
        assert ep["source"] == "metaworld" and ep["embodiment"] == "sawyer" and ep["fps"] == 80.0
        success = store.read(i, "next.success")
        assert success.dtype == bool and success[-1] and not success[0]
        assert store.read(i, "observation.images.corner").shape == (ep["length"], 64, 64, 3)
        assert store.read(i, "action").shape == (ep["length"], 4)
    # normalisation statistics equal those of all stored actions
    actions = np.concatenate([store.read(i, "action") for i in range(len(store.episodes))])
    stats = store.stats()["action"]
    np.testing.assert_allclose(stats["mean"], actions.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["std"], actions.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["min"], actions.min(0))
    np.testing.assert_allclose(stats["max"], actions.max(0))
    # the seeds differ per episode, so the scenes differ
    goals = [store.read(i, "observation.environment_state", np.array([0]))[0, -3:] for i in range(2)]
    assert not np.allclose(goals[0], goals[1])


def test_resume_after_kill_keeps_finished_episodes_and_matches(mw_store, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "defi", "data", "metaworld", "--out", str(out), "--tasks", TINY_TASKS,
           "--episodes-per-task", "2", "--cameras", "corner", "gripperPOV", "--max-steps", "150",
           "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": SRC, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    episodes = out / "episodes"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if episodes.is_dir() and any(p.suffix == ".zarr" and not p.name.startswith(".") for p in episodes.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the generator finished before it could be killed: " + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the generator and its worker processes
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in episodes.glob("*.zarr") if not p.name.startswith(".")}
    assert 1 <= len(finished) < 4
    report = generate_metaworld(tiny_gen_config(out))
    assert report.skipped_existing == len(finished) and report.kept == 4 - len(finished)
    for name, mtime in finished.items():  # finished episodes were kept, not rewritten
        assert (episodes / name).stat().st_mtime_ns == mtime
    assert not list(episodes.glob(".tmp-*"))
    # 2 workers + resume give exactly the episodes of one uninterrupted single-process run
    a, b = EpisodeStore.open(mw_store), EpisodeStore.open(out)
    assert [e["key"] for e in a.episodes] == [e["key"] for e in b.episodes]
    for i in range(4):
        np.testing.assert_array_equal(a.read(i, "action"), b.read(i, "action"))
        np.testing.assert_array_equal(a.read(i, "observation.images.corner"), b.read(i, "observation.images.corner"))


def test_action_noise_and_action_free(tmp_path):
    from defi.data.clips import ClipDataset
    from defi.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv("reach", seed=0, cameras=())
    try:
        _, clean = rollout(env, 5, tiny_gen_config(tmp_path))
        _, noisy = rollout(env, 5, tiny_gen_config(tmp_path, action_noise=0.3))
        n = min(len(clean["action"]), len(noisy["action"]))
        assert not np.allclose(clean["action"][:n], noisy["action"][:n])
    finally:
        env.close()
    out = tmp_path / "free"
    report = generate_metaworld(tiny_gen_config(out, tasks="reach", episodes_per_task=1, cameras=("corner",),
                                                action_free=True))
    assert report.kept == 1
    store = EpisodeStore.open(out)
    assert not store.info.has_actions and store.info.source == "metaworld-actionfree"
    assert set(store.info.features) == {"observation.images.corner"}
    item = ClipDataset(out, cameras=("corner",), future_frames=3, action_horizon=5)[0]
    assert not item["has_actions"] and not item["action_mask"].any()
    assert item["actions"].abs().sum() == 0 and item["state"].shape == (4,)


def test_generator_rejects_unknown_task_and_incompatible_resume(mw_store, tmp_path):
    with pytest.raises(DefiError, match=r"unknown Meta-World task 'fly'.*valid: MT10, MT50"):
        generate_metaworld(tiny_gen_config(tmp_path / "x", tasks="reach,fly"))
    with pytest.raises(DefiError, match=r"different cameras"):
        generate_metaworld(tiny_gen_config(mw_store, cameras=("corner",)))
    with pytest.raises(DefiError, match=r"different extra .*'seed': 0.*'seed': 1"):
        generate_metaworld(tiny_gen_config(mw_store, seed=1))
    with pytest.raises(DefiError, match=r"different extra .*'mesh_detail': 0.5"):
        generate_metaworld(tiny_gen_config(mw_store, mesh_detail=0.5))  # simplified meshes never mix in
    with pytest.raises(DefiError, match=r"mesh_detail"):
        generate_metaworld(tiny_gen_config(tmp_path / "y", mesh_detail=1.5))


def test_correlated_action_noise_moves_the_arm_off_the_expert_path(tmp_path):
    """AR(1) noise keeps its std but, unlike independent noise, is not averaged away by the expert's closed loop:
    the end effector's displacement over 32 steps (0.4 s) deviates far more from the clean episode's."""
    from defi.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv("reach", seed=0, cameras=())
    try:
        runs = {name: rollout(env, 5, tiny_gen_config(tmp_path, action_noise=0.3, action_noise_correlation=rho))[1]
                for name, rho in (("iid", 0.0), ("ar", 0.95))}
        clean = rollout(env, 5, tiny_gen_config(tmp_path))[1]
    finally:
        env.close()
    n = min(len(clean["action"]), *(len(r["action"]) for r in runs.values()), 80)
    assert n > 40
    deviation = {}
    for name, r in runs.items():
        noise = r["action"][:n] - np.clip(r["action"][:n], -1, 1)  # recorded actions are the executed, clipped ones
        assert np.all(noise == 0)
        moved = r["observation.state"][32:n, :3] - r["observation.state"][: n - 32, :3]
        clean_moved = clean["observation.state"][32:n, :3] - clean["observation.state"][: n - 32, :3]
        deviation[name] = float(np.abs(moved - clean_moved).mean())
    assert deviation["ar"] > 1.5 * deviation["iid"]  # measured: 0.019 vs 0.0095 m
    with pytest.raises(ConfigError):
        tiny_gen_config(tmp_path, action_noise_correlation=1.0).validate()
