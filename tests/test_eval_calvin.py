"""The CALVIN long-horizon protocol without calvin_env: the chain list, the scenes, the policy adapter and the
loop (chain iteration, early stop, average-length arithmetic, results JSON), driven by a stand-in environment and
a scripted oracle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from defi.errors import ConfigError, DefiError
from defi.eval import calvin as C
from defi.policies.base import PolicyMetadata

SCENE = {"led": 0, "lightbulb": 1, "slider": "left", "drawer": "closed", "red_block": "table",
         "blue_block": "slider_right", "pink_block": "table", "grasped": 0}


def test_fnv1_32_is_pyhash_fnv1_32():
    # expected values from pyfasthash's own tests (tests/test_fnv1.py with data b"test" / u"test")
    assert C.fnv1_32(b"test") == 3698262380
    assert C.fnv1_32(b"test", seed=3698262380) == 660137056
    assert C.fnv1_32("test".encode("utf-16-le")) == 3910690890
    expected = "dict_values([0, 1, 'left', 'closed', 'table', 'slider_right', 'table', 0])"
    assert str(SCENE.values()) == expected  # what CALVIN hashes
    assert C.scene_seed(SCENE) == C.fnv1_32(expected.encode("utf-16-le"))


def test_scenes_and_chain_rules():
    states = C.initial_states()
    assert len(states) == 192 and states[0] == {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed",
                                                "red_block": "table", "blue_block": "table",
                                                "pink_block": "slider_right", "grasped": 0}
    for s in states:
        blocks = [s[f"{c}_block"] for c in C.COLORS]
        assert blocks.count("table") in (1, 2) and blocks.count("slider_left") <= 1 >= blocks.count("slider_right")
    assert len(C.TASK_NAMES) == 34 and set(C.TASK_NAMES) == set(C.TASK_CATEGORY) == set(C.VALIDATION_INSTRUCTIONS) \
        == set(C.ORACLE_TASKS) == set(C.TASK_RULES)
    assert C.chain_is_valid(SCENE, ["open_drawer", "lift_red_block_table", "place_in_drawer", "turn_on_led",
                                    "move_slider_right"])
    assert not C.chain_is_valid(SCENE, ["close_drawer"])  # the drawer is closed
    assert not C.chain_is_valid(SCENE, ["open_drawer", "move_slider_right", "close_drawer"])  # category twice
    # a block in the right slot can be lifted while the door covers the left one, not the other way round
    assert C.chain_is_valid(SCENE, ["lift_blue_block_slider"])
    assert not C.chain_is_valid({**SCENE, "slider": "right"}, ["lift_blue_block_slider"])
    # holding red with only pink on the table: stacking has exactly one outcome, and so has unstacking
    assert C.chain_is_valid(SCENE, ["lift_red_block_table", "stack_block", "unstack_block"])
    assert C.next_states(SCENE, "lift_red_block_table") == [{**SCENE, "red_block": "grasped", "grasped": 1}]


def test_benchmark_chains_are_calvins_list():
    chains = C.BenchmarkChains()
    assert len(chains) == 1000
    # sum of the per-scene counts and the 6/5 split of np.array_split(range(1000), 192)
    assert sorted(set(chains._counts)) == [5, 6] and chains._counts.count(6) == 40
    # chains of CALVIN's list (get_sequences(1000)) at its start, middle and end; the full regenerated list was
    # compared with a published copy of that list at positions 0-34, 498-532 and 995-999
    expected = {
        0: ({"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
             "blue_block": "table", "pink_block": "slider_right", "grasped": 0},
            ("rotate_blue_block_right", "move_slider_right", "lift_red_block_slider", "place_in_slider",
             "turn_off_lightbulb")),
        499: ({"led": 0, "lightbulb": 1, "slider": "right", "drawer": "open", "red_block": "slider_right",
               "blue_block": "table", "pink_block": "slider_left", "grasped": 0},
              ("push_into_drawer", "lift_blue_block_drawer", "place_in_slider", "close_drawer", "turn_on_led")),
        999: ({"led": 1, "lightbulb": 0, "slider": "left", "drawer": "closed", "red_block": "slider_right",
               "blue_block": "slider_left", "pink_block": "table", "grasped": 0},
              ("move_slider_right", "turn_on_lightbulb", "push_pink_block_left", "open_drawer", "push_into_drawer")),
    }
    for k, chain in expected.items():
        assert chains[k] == chain
        assert C.chain_is_valid(*chain)


def test_initial_env_state_places_the_scene():
    robot, scene = C.initial_env_state(SCENE)
    assert robot.shape == (15,) and robot[-1] == 1.0  # gripper open
    assert scene.shape == (24,)
    assert scene[0] == 0.28 and scene[1] == 0.0 and scene[3] == 0.088 and scene[4] == 1 and scene[5] == 0
    np.testing.assert_allclose(scene[12:15], C._SLOT_POS["slider_right"])
    table = {tuple(np.round(p, 6)) for p in C._TABLE_POS}
    red, pink = tuple(np.round(scene[6:9], 6)), tuple(np.round(scene[18:21], 6))
    assert {red, pink} == table  # the two table blocks take the two table spots
    yaws = scene[[11, 17, 23]]
    assert np.all((yaws > C._BLOCK_YAW[0]) & (yaws < C._BLOCK_YAW[1]))
    again = C.initial_env_state(dict(reversed(list(SCENE.items()))))  # key order does not matter
    np.testing.assert_array_equal(again[1], scene)
    with pytest.raises(DefiError, match="drawer='half'"):
        C.initial_env_state({**SCENE, "drawer": "half"})


def test_success_rates_and_average_length():
    lengths = [0, 1, 5, 3, 3]
    assert C.chain_success_rates(lengths) == [0.8, 0.6, 0.6, 0.2, 0.2]
    chains = [(SCENE, ("a", "b", "c", "d", "e"))] * 5
    s = C.summarise_chains(lengths, chains)
    assert s["avg_len"] == pytest.approx(2.4) and s["num_chains"] == 5
    assert s["chain_sr"] == {"1": 0.8, "2": 0.6, "3": 0.6, "4": 0.2, "5": 0.2}
    # a subtask counts once per chain that reached it; the failed one is in the total, not in the successes
    assert s["task_info"]["a"] == {"success": 4, "total": 5, "success_rate": 0.8}
    assert s["task_info"]["d"] == {"success": 1, "total": 3, "success_rate": pytest.approx(1 / 3)}


# -- the loop with stand-ins -------------------------------------------------------------------------------------
class FakeEnv:
    """calvin_env's PlayTableSimEnv surface: reset(robot_obs, scene_obs), get_obs, get_info, step."""

    def __init__(self):
        self.t = 0
        self.resets: list[tuple[np.ndarray, np.ndarray]] = []
        self.actions: list[np.ndarray] = []

    def reset(self, robot_obs=None, scene_obs=None):
        self.resets.append((robot_obs, scene_obs))
        return self.get_obs()

    def get_obs(self):
        static = np.full((200, 200, 3), self.t % 256, np.uint8)
        return {"rgb_obs": {"rgb_static": static, "rgb_gripper": np.zeros((84, 84, 3), np.uint8)},
                "depth_obs": {}, "robot_obs": np.arange(15.0) + self.t, "scene_obs": np.zeros(24)}

    def get_info(self):
        return {"t": self.t}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        assert a.shape == (7,) and a[6] in (-1.0, 1.0) and np.all(np.abs(a[:6]) <= 1.0)
        self.actions.append(a)
        self.t += 1
        return self.get_obs(), 0, False, self.get_info()


class ScriptedOracle:
    """Reports a subtask done once it has run `need[task]` steps (never when None)."""

    def __init__(self, need):
        self.need = need
        self.asked: list[str] = []

    def get_task_info_for_set(self, start_info, end_info, task_filter):
        (task,) = task_filter
        if not self.asked or self.asked[-1] != (task, start_info["t"]):
            self.asked.append((task, start_info["t"]))
        n = self.need[task]
        return {task} if n is not None and end_info["t"] - start_info["t"] >= n else set()


class StubPolicy:
    """A Policy API object: chunks of 4 actions, with values outside [-1, 1] to be clipped."""

    metadata = PolicyMetadata("stub", cameras=["static", "gripper"], image_size=[32, 32], state_dim=15, action_dim=7,
                              action_horizon=4)

    def __init__(self):
        self.seeds: list[int | None] = []
        self.calls: list[tuple[dict, str]] = []

    @property
    def resets(self) -> int:
        return len(self.seeds)

    def reset(self, seed=None):
        self.seeds.append(seed)

    def act(self, observation, instruction):
        self.calls.append(({k: (v.shape, v.dtype) for k, v in observation.items()}, instruction))
        chunk = np.tile(np.array([0.5, 3.0, -2.0, 0.0, 0.1, -0.1, -0.2], np.float32), (4, 1))
        chunk[1:, 6] = 0.7
        return chunk


NEED = {"open_drawer": 6, "turn_on_led": 3, "move_slider_right": 9, "lift_red_block_table": 5,
        "place_in_drawer": 2, "push_pink_block_left": None, "turn_off_lightbulb": 4}
CHAINS = [
    (SCENE, ("open_drawer", "lift_red_block_table", "place_in_drawer", "turn_on_led", "move_slider_right")),
    ({**SCENE, "drawer": "open"}, ("turn_on_led", "push_pink_block_left", "turn_off_lightbulb", "open_drawer",
                                   "move_slider_right")),
    (SCENE, ("push_pink_block_left", "open_drawer", "turn_on_led", "turn_off_lightbulb", "move_slider_right")),
]


def run(tmp_path: Path, name: str = "eval", chains=CHAINS, **changes):
    cfg = C.CalvinEvalConfig(num_chains=len(chains), steps_per_subtask=12, video_chains=1, **changes)
    env, oracle, policy = FakeEnv(), ScriptedOracle(NEED), StubPolicy()
    model = C.CalvinPolicyAdapter(policy, execute_steps=cfg.execute_steps)
    metrics = C.evaluate_calvin(model, env, oracle, cfg, tmp_path / name, chains=chains, progress=False)
    return metrics, env, oracle, policy


def test_chains_run_in_order_and_stop_at_the_first_failure(tmp_path):
    metrics, env, oracle, policy = run(tmp_path)
    assert [c["completed"] for c in metrics["chains"]] == [5, 1, 0]
    assert [c["steps"] for c in metrics["chains"]] == [[6, 5, 2, 3, 9], [3, 12], [12]]
    assert metrics["avg_len"] == pytest.approx(2.0)
    assert metrics["chain_sr"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(1 / 3), "3": pytest.approx(1 / 3),
                                   "4": pytest.approx(1 / 3), "5": pytest.approx(1 / 3)}
    # nothing after a failed subtask runs: 5 + 2 + 1 subtasks, each with a policy reset, 8 + 4 x 12 steps
    assert [t for t, _ in oracle.asked] == [*CHAINS[0][1], "turn_on_led", "push_pink_block_left",
                                            "push_pink_block_left"]
    assert policy.resets == 8 and len(env.actions) == 25 + 15 + 12
    # each subtask's sampling noise is seeded from (chain, subtask): shards and resumed runs repeat every action
    assert policy.seeds == [0, 1, 2, 3, 4, 100, 101, 200]
    # a fresh chunk at each subtask start and every 4 steps (ceil(steps / 4) calls per subtask)
    assert len(policy.calls) == sum(-(-n // 4) for c in metrics["chains"] for n in c["steps"])
    assert policy.calls[0] == ({"observation.images.static": ((32, 32, 3), np.uint8),
                                "observation.images.gripper": ((32, 32, 3), np.uint8),
                                "observation.state": ((15,), np.float32)}, "open the drawer")
    assert [i for _, i in policy.calls[-3:]] == ["push the pink block to the left"] * 3
    # every chain starts from its scene's simulator state
    assert len(env.resets) == 3
    np.testing.assert_array_equal(env.resets[1][1], C.initial_env_state(CHAINS[1][0])[1])
    # actions as calvin_env takes them: clipped to [-1, 1], gripper exactly -1 / 1
    np.testing.assert_allclose(env.actions[0], [0.5, 1.0, -1.0, 0.0, 0.1, -0.1, -1.0], rtol=1e-6)
    assert env.actions[1][6] == 1.0


def test_results_json_videos_and_resume(tmp_path):
    metrics, *_ = run(tmp_path)
    out = tmp_path / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert saved["avg_len"] == metrics["avg_len"] and saved["num_chains"] == 3
    assert set(saved) >= {"avg_len", "chain_sr", "task_info", "chains", "config", "policy_ms_per_call"}
    assert saved["task_info"]["push_pink_block_left"] == {"success": 0, "total": 2, "success_rate": 0.0}
    videos = sorted((out / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["chain0000_5of5.mp4"]
    import av

    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 25 + 1 and frames[0].shape == (200, 400, 3)  # every step and the last state
    assert len((out / "chains.jsonl").read_text().splitlines()) == 3
    # an interrupted run continues: recorded chains are not run again, a half-written last record is redone
    record = out / "chains.jsonl"
    lines = record.read_text().splitlines()
    record.write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    again, env, _, _ = run(tmp_path)
    assert len(env.actions) == 12 and again["avg_len"] == metrics["avg_len"]
    assert [json.loads(line)["chain"] for line in record.read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(DefiError, match="another chain list"):
        run(tmp_path, chains=CHAINS[::-1])
    fresh, env, _, _ = run(tmp_path, resume=False)
    assert len(env.actions) == 52 and fresh["avg_len"] == metrics["avg_len"]
    assert "| 3 | 66.7% | 33.3% | 33.3% | 33.3% | 33.3% | 2.00 |" in C.format_results(fresh)


def test_shards_merge_to_the_whole_run(tmp_path):
    whole, *_ = run(tmp_path, "whole")
    a, *_ = run(tmp_path, "a", shard=(0, 2))
    b, *_ = run(tmp_path, "b", shard=(1, 2))
    assert [c["chain"] for c in a["chains"]] == [0, 2] and [c["chain"] for c in b["chains"]] == [1]
    merged = C.run_calvin_merge(C.CalvinMergeConfig(shards=(tmp_path / "a", tmp_path / "b"),
                                                    out_dir=tmp_path / "merged"))
    assert merged["avg_len"] == whole["avg_len"] and merged["chain_sr"] == whole["chain_sr"]
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["num_chains"] == 3


def test_adapter_horizon_action_space_and_errors():
    policy = StubPolicy()
    model = C.CalvinPolicyAdapter(policy)  # default: the whole chunk of 4
    obs = FakeEnv().get_obs()
    for _ in range(8):
        model.step(obs, "open the drawer")
    assert len(policy.calls) == 2
    model.reset()
    assert len(model.queue) == 0 and policy.resets == 1
    pos, orn, grip = C.CalvinPolicyAdapter(StubPolicy(), actions="abs").step(obs, "x")
    assert pos.tolist() == [0.5, 3.0, -2.0] and grip == -1  # absolute poses are not clipped
    with pytest.raises(DefiError, match="action_dim=4"):
        C.CalvinPolicyAdapter(type("P", (), {"metadata": replace(StubPolicy.metadata, action_dim=4)})())
    with pytest.raises(DefiError, match="'static' and 'gripper' only"):
        C.CalvinPolicyAdapter(type("P", (), {"metadata": replace(StubPolicy.metadata, cameras=["corner"])})())
    # a policy without proprio input is not sent robot_obs; one with a non-square image size gets that size
    blind = StubPolicy()
    blind.metadata = replace(StubPolicy.metadata, state_dim=0, image_size=[24, 40])
    C.CalvinPolicyAdapter(blind).step(obs, "x")
    assert blind.calls[0][0] == {"observation.images.static": ((24, 40, 3), np.uint8),
                                 "observation.images.gripper": ((24, 40, 3), np.uint8)}
    with pytest.raises(DefiError, match=r"rgb_obs\['rgb_gripper'\]"):
        C.CalvinPolicyAdapter(StubPolicy()).step({"rgb_obs": {"rgb_static": obs["rgb_obs"]["rgb_static"]}}, "x")
    bad = StubPolicy()
    bad.act = lambda o, i: np.zeros((4, 6), np.float32)
    with pytest.raises(DefiError, match=r"returned shape \[4, 6\]"):
        C.CalvinPolicyAdapter(bad).step(obs, "x")


def test_chain_files_round_trip_and_name_bad_entries(tmp_path):
    path = C.save_chains(CHAINS, tmp_path / "chains.json")
    assert C.load_chains(path) == [(dict(s), t) for s, t in CHAINS]
    (tmp_path / "bad.json").write_text(json.dumps([[SCENE, ["open_drawer", "fly_away"]]]))
    with pytest.raises(DefiError, match=r"bad.json: chain 0: unknown subtask 'fly_away'"):
        C.load_chains(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([[{**SCENE, "led": 3}, ["open_drawer"]]]))
    with pytest.raises(DefiError, match=r"bad2.json: chain 0: initial state led=3"):
        C.load_chains(tmp_path / "bad2.json")


def test_without_calvin_env_the_run_says_how_to_install_it(tmp_path):
    cfg = C.CalvinEvalRunConfig(policy=tmp_path / "policy", dataset=tmp_path / "task_ABC_D", out_dir=tmp_path / "o")
    with pytest.raises(DefiError, match=r"validation/.hydra/merged_config.yaml: missing"):
        C.run_calvin_eval(cfg)
    conf = tmp_path / "task_ABC_D" / "validation" / ".hydra" / "merged_config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("env: {}\n")
    with pytest.raises(DefiError, match="calvin_env is not installed"):
        C.run_calvin_eval(cfg)


def test_configs_validate():
    from defi.config import from_dict, validate_config

    assert C.CalvinEvalRunConfig.preset_names() == ("paper", "smoke")
    assert C.CalvinEvalRunConfig.default_preset == "paper"
    for name in C.CalvinEvalRunConfig.preset_names():
        validate_config(C.CalvinEvalRunConfig.preset(name))
    paper = C.CalvinEvalRunConfig.preset("paper").eval
    assert (paper.num_chains, paper.steps_per_subtask, paper.actions, paper.seed) == (1000, 360, "rel", 0)
    with pytest.raises(ConfigError, match="shard"):
        from_dict(C.CalvinEvalConfig, {"shard": [2, 2]})


def test_oracle_table_binds_to_calvin_env_task_signatures():
    """calvin_env's Tasks binds each entry as partial(method, *args) and calls it with start_info and end_info;
    the stand-ins below have the signatures of calvin_env/envs/tasks.py's methods."""
    import inspect

    def rotate_object(obj_name, z_degrees, x_y_threshold=30, z_threshold=180, movement_threshold=0.1,
                      start_info=None, end_info=None): ...
    def push_object(obj_name, x_direction, y_direction, start_info, end_info): ...
    def lift_object(obj_name, z_direction, surface_body=None, surface_link=None, start_info=None, end_info=None): ...
    def place_object(dest_body, dest_link=None, start_info=None, end_info=None): ...
    def push_object_into(obj_name, src_body, src_link, dest_body, dest_link, start_info=None, end_info=None): ...
    def move_door_rel(joint_name, threshold, start_info, end_info): ...
    def toggle_light(light_name, start_state, end_state, start_info, end_info): ...
    def stack_objects(max_vel=1, start_info=None, end_info=None): ...
    def unstack_objects(max_vel=1, start_info=None, end_info=None): ...

    methods = {f.__name__: f for f in (rotate_object, push_object, lift_object, place_object, push_object_into,
                                       move_door_rel, toggle_light, stack_objects, unstack_objects)}
    for name, (method, *args) in C.ORACLE_TASKS.items():
        inspect.signature(methods[method]).bind(*args, start_info={}, end_info={})
    assert C.ORACLE_TASKS["lift_pink_block_slider"] == ["lift_object", "block_pink", 0.03, "table", "plank_link"]
    assert C.ORACLE_TASKS["close_drawer"] == ["move_door_rel", "base__drawer", -0.12]
    with pytest.raises(DefiError, match="calvin_env is not installed"):
        C.make_task_oracle()


@pytest.mark.slow
def test_finetune_on_calvin_then_eval_calvin(tmp_path, monkeypatch):
    """The CALVIN path end to end at toy sizes: `finetune` reads a tiny split in CALVIN's layout in place (both
    views resized, 7-d relative actions, 15-d robot_obs), saves the policy; `run_calvin_eval` loads it (load_policy)
    and drives it through the protocol, with calvin_env replaced by stand-in modules."""
    import sys
    import types

    from calvin_helpers import write_calvin_split
    from defi.data.config import data_calvin_tiny
    from defi.policies.defi import DeFIConfig
    from defi.train import finetune

    root = tmp_path / "task_tiny"
    write_calvin_split(root / "training")
    base = DeFIConfig.preset("tiny")
    policy_cfg = replace(base, cameras=("static", "gripper"), action_dim=7, state_dim=15,
                         inverse=replace(base.inverse, camera="static"), adapter=replace(base.adapter, action_dim=7))
    cfg = replace(finetune.FinetuneConfig.preset("tiny"), run_dir=tmp_path / "finetune", data=data_calvin_tiny(root),
                  defi=policy_cfg, evaluate=False)
    trained = finetune.run(cfg)
    assert trained["data"]["train_clips"] > 0 and trained["train"]["loss"] > 0 and "closed_loop" not in trained

    class Tasks:  # calvin_env's constructor semantics; every subtask is done after 3 steps
        def __init__(self, tasks):
            self.tasks = dict(tasks)

        def get_task_info_for_set(self, start_info, end_info, task_filter):
            return {t for t in self.tasks if t in task_filter and end_info["t"] - start_info["t"] >= 3}

    made = []
    env_mod = types.ModuleType("calvin_env.envs.play_table_env")
    env_mod.get_env = lambda path, obs_space=None, show_gui=False: made.append((path, obs_space)) or FakeEnv()
    tasks_mod = types.ModuleType("calvin_env.envs.tasks")
    tasks_mod.Tasks = Tasks
    for name, mod in {"calvin_env": types.ModuleType("calvin_env"), "calvin_env.envs": types.ModuleType("envs"),
                      "calvin_env.envs.play_table_env": env_mod, "calvin_env.envs.tasks": tasks_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    conf = tmp_path / "task_ABC_D" / "validation" / ".hydra" / "merged_config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("env: {}\n")
    run_cfg = C.CalvinEvalRunConfig(policy=tmp_path / "finetune", dataset=tmp_path / "task_ABC_D",
                                    out_dir=tmp_path / "out", device="cpu",
                                    eval=C.CalvinEvalConfig(num_chains=2, steps_per_subtask=8, video_chains=0))
    metrics = C.run_calvin_eval(run_cfg)
    assert made == [(tmp_path / "task_ABC_D" / "validation",
                     {"rgb_obs": ["rgb_static", "rgb_gripper"], "depth_obs": []})]
    assert metrics["avg_len"] == 5.0 and metrics["policy_calls"] == 10  # one 4-action chunk per 3-step subtask
    assert [c["tasks"] for c in metrics["chains"]] == [list(C.BenchmarkChains()[k][1]) for k in range(2)]
    assert (tmp_path / "out" / "results.json").is_file() and (tmp_path / "out" / "config.json").is_file()
