"""The Meta-World v3 wrapper: task lists, observations in the Policy API format, seeding, expert, cameras."""

from __future__ import annotations

import numpy as np
import pytest

from defi.envs.metaworld import MT10, FreeCamera, MetaWorldEnv, all_tasks, resolve_tasks
from defi.errors import DefiError


def test_task_lists_and_unknown_names():
    assert resolve_tasks("MT10") == list(MT10)
    assert len(resolve_tasks("MT50")) == 50 == len(all_tasks())
    assert resolve_tasks("reach, push-v3") == ["reach-v3", "push-v3"]
    with pytest.raises(DefiError, match=r"unknown Meta-World task 'stack-cups'.*valid: MT10, MT50, .*pick-place"):
        resolve_tasks("reach,stack-cups")


def test_observation_format_seeding_and_expert():
    env = MetaWorldEnv("reach", seed=0, cameras=("corner", "gripperPOV"), image_size=32)
    try:
        obs = env.reset(seed=7)
        assert set(obs) == {"observation.images.corner", "observation.images.gripperPOV", "observation.state",
                            "observation.environment_state"}
        assert obs["observation.images.corner"].shape == (32, 32, 3)
        assert obs["observation.images.corner"].dtype == np.uint8
        assert obs["observation.state"].shape == (4,) and obs["observation.state"].dtype == np.float32
        goal_a = obs["observation.environment_state"][-3:].copy()
        goal_again = env.reset(seed=7)["observation.environment_state"][-3:]
        goal_b = env.reset(seed=8)["observation.environment_state"][-3:]
        np.testing.assert_array_equal(goal_a, goal_again)
        assert not np.allclose(goal_a, goal_b)  # positions are randomised per seed
        assert env.fps == 80.0 and env.max_episode_steps == 500
        for _ in range(150):
            obs, _, done, info = env.step(env.expert_action())
            if env.success:
                break
        assert env.success and info["success"]
        # corner cameras are rotated by 180 degrees: the wrapper's image is the raw render flipped on both axes
        env._renderer.update_scene(env._env.data, camera="corner")
        raw = env._renderer.render()
        np.testing.assert_array_equal(env.render()["corner"], raw[::-1, ::-1])
    finally:
        env.close()


def test_first_frame_shows_this_scene_not_the_last_one():
    # Meta-World moves the goal site at reset without recomputing where sites are drawn: without the wrapper's
    # kinematics pass the first frame showed the previous episode's goal (push: a 2 cm green sphere)
    frames = []
    for before in (3, 4):
        with MetaWorldEnv("push", seed=0, cameras=("workspace_close",), image_size=64) as env:
            env.reset(seed=before)
            frames.append(env.reset(seed=11)["observation.images.workspace_close"])
    np.testing.assert_array_equal(frames[0], frames[1])


def test_unknown_camera():
    with pytest.raises(DefiError, match="unknown Meta-World camera 'wrist'"):
        MetaWorldEnv("reach", cameras=("wrist",))


def test_free_cameras_show_where_the_scene_differs():
    extra = {"close": FreeCamera(lookat=(0.0, 0.7, 0.1), distance=0.6, azimuth=-45.0, elevation=-45.0, fovy=40.0)}
    env = MetaWorldEnv("push", seed=0, cameras=("corner", "workspace_close", "close"), image_size=48, free_cameras=extra)
    try:
        env.reset(seed=1)
        a = env.render()
        corner_again = env.render()["corner"]
        np.testing.assert_array_equal(a["corner"], corner_again)  # a free camera's fovy leaves fixed cameras alone
        b = env.reset(seed=2)
        assert b["observation.images.workspace_close"].shape == (48, 48, 3)

        def changed(cam):
            diff = np.abs(a[cam].astype(np.int16) - b[f"observation.images.{cam}"]).max(axis=-1)
            return int((diff > 16).sum())

        # the puck and goal move between scenes: the workspace view shows it on more pixels than the corner one
        assert changed("workspace_close") > 2 * changed("corner") > 0
        assert changed("close") > changed("workspace_close")
    finally:
        env.close()
    with pytest.raises(DefiError, match="valid: .*workspace_close"):
        MetaWorldEnv("reach", cameras=("close",))  # extra poses belong to the environment they were given to


def test_mesh_detail_draws_fewer_triangles_of_the_same_scene():
    full = MetaWorldEnv("push", seed=0, cameras=("corner",), image_size=32)
    simple = MetaWorldEnv("push", seed=0, cameras=("corner",), image_size=32, mesh_detail=0.25)
    try:
        physics_faces = int(simple._env.model.mesh_facenum.sum())
        drawn_faces = int(simple._renderer.model.mesh_facenum.sum())
        assert drawn_faces < 0.4 * physics_faces  # only the drawing copy is simplified
        assert physics_faces == int(full._renderer.model.mesh_facenum.sum())
        a, b = full.reset(seed=3), simple.reset(seed=3)
        for _ in range(20):
            action = full.expert_action()
            a, *_ = full.step(action)
            b, *_ = simple.step(action)
        np.testing.assert_array_equal(a["observation.state"], b["observation.state"])  # physics untouched
        img_a, img_b = a["observation.images.corner"], b["observation.images.corner"]
        diff = np.abs(img_a.astype(np.int16) - img_b).mean()
        assert 0 < diff < 6, diff  # simplified arm: a few edge pixels change, the scene stays the same
    finally:
        full.close()
        simple.close()
    with pytest.raises(DefiError, match="mesh_detail"):
        MetaWorldEnv("reach", cameras=("corner",), mesh_detail=0.0)
