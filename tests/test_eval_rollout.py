"""Batched closed-loop evaluation: one batched policy call for several environments, seeded episodes that repeat
exactly whatever the batching, and the vision-reliance check (another scene's image held for the episode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defi.eval.metaworld import EvalConfig, _specs, evaluate
from defi.eval.stats import paired_difference
from defi.policies.base import act_batch
from defi.policies.defi import DeFIConfig, DeFIPolicy

STATS = {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    p = DeFIPolicy(DeFIConfig.preset("tiny"))
    p.normalizer.set_stats({"action": STATS, "observation.state": STATS})
    for param in p.adapter.parameters():  # random output layers, so that actions depend on inputs and noise
        torch.nn.init.normal_(param, std=0.05)
    return p.eval()


def observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.images.corner": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=4).astype(np.float32)}


def test_a_batched_call_gives_each_fork_what_it_gets_alone(policy):
    forks = [policy.fork() for _ in range(3)]
    for i, fork in enumerate(forks):
        fork.reset(seed=100 + i)
    together = act_batch(forks, [observation(i) for i in range(3)], ["reach the goal", "open it", "push it"])
    for i, fork in enumerate(forks):
        fork.reset(seed=100 + i)
        alone = fork.act(observation(i), ["reach the goal", "open it", "push it"][i])
        np.testing.assert_allclose(together[i], alone, atol=1e-4)
    assert not np.allclose(together[0], together[1])


def test_episodes_repeat_whatever_the_batch_and_the_vision_check_is_paired(policy, tmp_path):
    cfg = EvalConfig(tasks=("push-v3",), episodes_per_task=3, max_episode_steps=12, image_size=32,
                     execute_steps=4, vision_check=True, video_episodes=0)
    one = evaluate(policy, EvalConfig(**{**cfg.__dict__, "batch_size": 1}), tmp_path / "a")
    many = evaluate(policy, EvalConfig(**{**cfg.__dict__, "batch_size": 4}), tmp_path / "b")
    key = [(e["task"], e["episode"], e["mode"], e["success"], e["steps"], e["policy_calls"]) for e in one["episodes"]]
    assert key == [(e["task"], e["episode"], e["mode"], e["success"], e["steps"], e["policy_calls"])
                   for e in many["episodes"]]
    assert [e["mode"] for e in one["episodes"]] == ["real", "wrong_scene"] * 3
    check = one["vision_check"]
    assert check["difference"]["pairs"] == 3 and "push-v3" in check["per_task_difference"]
    assert check["wrong_scene"]["overall"]["episodes"] == 3 and one["overall"]["episodes"] == 3


def test_the_wrong_scene_is_another_scene_of_the_same_task(tmp_path):
    from defi.envs.metaworld import MetaWorldEnv

    cfg = EvalConfig(tasks=("push-v3",), episodes_per_task=2, image_size=32, vision_check=True)
    specs = _specs(["push-v3"], cfg, tmp_path)
    assert [s.mode for s in specs] == ["real", "wrong_scene", "real", "wrong_scene"]
    with MetaWorldEnv("push-v3", cameras=("corner",), image_size=32) as env:
        first = env.reset(seed=specs[0].seed)["observation.images.corner"]
        second = env.reset(seed=specs[2].seed)["observation.images.corner"]
    shown = specs[1].image_override["observation.images.corner"]
    assert np.array_equal(shown, second) and not np.array_equal(shown, first)


def test_paired_difference_interval():
    a = [1] * 15 + [0] * 5
    b = [0] * 15 + [0] * 5
    d = paired_difference(a, b, strata=["x"] * 10 + ["y"] * 10, n_boot=2000)
    assert d["difference"] == pytest.approx(0.75) and 0.5 < d["ci95_low"] < 0.75 < d["ci95_high"] <= 1.0
    same = paired_difference([1, 0, 1, 0], [1, 0, 1, 0], n_boot=200)
    assert same["difference"] == 0 and same["ci95_low"] == same["ci95_high"] == 0
    clustered = paired_difference(a, b, clusters=[0, 1] * 10, n_boot=2000)
    assert clustered["ci95_low"] <= clustered["difference"] <= clustered["ci95_high"]


def test_lockstep_slots_reuse_environments_and_share_a_renderer_per_task(policy):
    from defi.envs import metaworld
    from defi.envs.metaworld import MetaWorldEnv
    from defi.eval.rollout import EpisodeSpec, run_episodes

    built: list[MetaWorldEnv] = []

    def make_env(task: str) -> MetaWorldEnv:
        built.append(MetaWorldEnv(task, cameras=("corner",), image_size=32, max_episode_steps=8))
        return built[-1]

    specs = [EpisodeSpec(task, ep, 1000 + ep, "do it") for task in ("reach-v3", "push-v3") for ep in range(6)]
    results = run_episodes(policy, make_env, specs, execute_steps=4, batch_size=4)
    assert [(r.task, r.episode) for r in results] == [(s.task, s.episode) for s in specs]
    # 4 slots take the two tasks in turn: 2 environments per task, reused, instead of one per slot and task
    assert sorted(e.task for e in built) == ["push-v3"] * 2 + ["reach-v3"] * 2
    assert built[0]._renderer is None and not metaworld._RENDERERS  # all closed, the shared contexts freed

    # environments of one task share one GL context, and each still renders its own scene
    with MetaWorldEnv("push-v3", cameras=("corner",), image_size=32) as a, \
            MetaWorldEnv("push-v3", cameras=("corner",), image_size=32) as b:
        assert a._renderer is b._renderer
        first, second = a.reset(seed=1), b.reset(seed=2)
        b.close()
        again = a.reset(seed=1)  # the context outlives b
    with MetaWorldEnv("push-v3", cameras=("corner",), image_size=32) as alone:
        reference = alone.reset(seed=2)
    key = "observation.images.corner"
    assert np.array_equal(first[key], again[key]) and np.array_equal(second[key], reference[key])
    assert not np.array_equal(first[key], second[key])
