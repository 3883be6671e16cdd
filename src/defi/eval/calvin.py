"""The CALVIN long-horizon evaluation protocol over any policy with the defi Policy API.

The protocol (github.com/mees/calvin, calvin_models/calvin_agent/evaluation/evaluate_policy.py):

- 1000 chains of 5 subtasks, each chain starting from one of 192 symbolic initial scenes (drawer, sliding door,
  lights, where the three blocks lie). The list is the benchmark's fixed one: `benchmark_chains()` regenerates it
  with CALVIN's seeded generator (evaluation/multistep_sequences.py), or `load_chains()` reads a JSON file of
  [initial_state, [task, ...]] pairs.
- Each chain resets the simulator to its scene (`initial_env_state`, evaluation/utils.py), then runs its subtasks
  in order: the policy is reset, given the subtask's validation instruction
  (conf/annotations/new_playtable_validation.yaml) and up to 360 steps; the subtask succeeds at the first step
  at which calvin_env's task oracle (calvin_env/envs/tasks.py with conf/callbacks/rollout/tasks/
  new_playtable_tasks.yaml) reports it between the subtask's first and current state. The chain stops at the
  first failed subtask.
- Results: the share of chains that completed at least k subtasks, k = 1..5, and the average length (the mean
  number of completed subtasks, 0..5): the "Avg. Len." the papers report.

The simulator is `calvin_env`, which is not on PyPI (see the README's CALVIN section); everything else here
(chains, scenes, the adapter, the loop and the arithmetic) is plain Python and runs without it, which is how the
tests drive the loop with a stand-in environment and a scripted oracle.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from defi.config import Config, preset, to_dict
from defi.errors import DefiError

NUM_CHAINS = 1000
CHAIN_LENGTH = 5
STEPS_PER_SUBTASK = 360

COLORS = ("red", "blue", "pink")

# The subtask each chain step asks for, in the order CALVIN's generator draws from (the order matters: the
# generator samples indices into this list).
TASK_NAMES: tuple[str, ...] = (
    *(f"rotate_{c}_block_{d}" for c in COLORS for d in ("right", "left")),
    *(f"push_{c}_block_{d}" for c in COLORS for d in ("right", "left")),
    "move_slider_left", "move_slider_right", "open_drawer", "close_drawer",
    *(f"lift_{c}_block_{where}" for c in COLORS for where in ("table", "slider", "drawer")),
    "place_in_slider", "place_in_drawer", "stack_block", "unstack_block",
    "turn_on_lightbulb", "turn_off_lightbulb", "turn_on_led", "turn_off_led", "push_into_drawer",
)

# One chain never holds two subtasks of a category (multistep_sequences.py's task_categories).
TASK_CATEGORY: dict[str, int] = {
    **{f"{verb}_{c}_block_{d}": 1 for verb in ("rotate", "push") for c in COLORS for d in ("right", "left")},
    "move_slider_left": 2, "move_slider_right": 2, "open_drawer": 3, "close_drawer": 3,
    **{f"lift_{c}_block_table": 4 for c in COLORS}, **{f"lift_{c}_block_slider": 5 for c in COLORS},
    **{f"lift_{c}_block_drawer": 6 for c in COLORS},
    "place_in_slider": 7, "place_in_drawer": 7,
    "turn_on_lightbulb": 8, "turn_off_lightbulb": 8, "turn_on_led": 8, "turn_off_led": 8,
    "push_into_drawer": 9, "stack_block": 10, "unstack_block": 11,
}

# The instruction each subtask is given (conf/annotations/new_playtable_validation.yaml, first sentence).
VALIDATION_INSTRUCTIONS: dict[str, str] = {
    **{f"{verb}_{c}_block_{d}": f"{verb} the {c} block to the {d}"
       for verb in ("rotate", "push") for c in COLORS for d in ("right", "left")},
    "move_slider_left": "slide the door to the left", "move_slider_right": "slide the door to the right",
    "open_drawer": "open the drawer", "close_drawer": "close the drawer",
    **{f"lift_{c}_block_table": f"pick up the {c} block" for c in COLORS},
    **{f"lift_{c}_block_slider": f"pick up the {c} block in the sliding cabinet" for c in COLORS},
    **{f"lift_{c}_block_drawer": f"grasp the {c} block in the drawer" for c in COLORS},
    "place_in_slider": "put the block in the sliding cabinet", "place_in_drawer": "put the block in the drawer",
    "push_into_drawer": "push the block into the drawer",
    "stack_block": "stack the blocks", "unstack_block": "unstack the blocks",
    "turn_on_lightbulb": "turn on the light bulb", "turn_off_lightbulb": "turn off the light bulb",
    "turn_on_led": "turn on the led light", "turn_off_led": "turn off the led light",
}

# calvin_env's oracle definitions: task -> [Tasks method, *arguments] (new_playtable_tasks.yaml). Built-in so that
# the evaluation does not depend on finding calvin_models' configuration files.
ORACLE_TASKS: dict[str, list[Any]] = {
    **{f"rotate_{c}_block_{d}": ["rotate_object", f"block_{c}", -60 if d == "right" else 60]
       for c in COLORS for d in ("right", "left")},
    **{f"push_{c}_block_{d}": ["push_object", f"block_{c}", 0.1 if d == "right" else -0.1, 0]
       for c in COLORS for d in ("right", "left")},
    "move_slider_left": ["move_door_rel", "base__slide", 0.15],
    "move_slider_right": ["move_door_rel", "base__slide", -0.15],
    "open_drawer": ["move_door_rel", "base__drawer", 0.12],
    "close_drawer": ["move_door_rel", "base__drawer", -0.12],
    **{f"lift_{c}_block_{where}": ["lift_object", f"block_{c}", 0.03 if where == "slider" else 0.05, "table",
                                   {"table": "base_link", "slider": "plank_link", "drawer": "drawer_link"}[where]]
       for c in COLORS for where in ("table", "slider", "drawer")},
    "place_in_slider": ["place_object", "table", "plank_link"],
    "place_in_drawer": ["place_object", "table", "drawer_link"],
    "stack_block": ["stack_objects"],
    "unstack_block": ["unstack_objects"],
    "turn_on_lightbulb": ["toggle_light", "lightbulb", 0, 1],
    "turn_off_lightbulb": ["toggle_light", "lightbulb", 1, 0],
    "turn_on_led": ["toggle_light", "led", 0, 1],
    "turn_off_led": ["toggle_light", "led", 1, 0],
    "push_into_drawer": ["push_object_into", [f"block_{c}" for c in COLORS], "table", "base_link", "table",
                         "drawer_link"],
}

# The symbolic scene: variable -> values, in the order CALVIN enumerates initial states (multistep_sequences.py).
SCENE_VALUES: dict[str, tuple[Any, ...]] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}

Rule = tuple[dict[str, Any], dict[str, Any]]  # (condition, effect); a list in a condition means "any of"


def _task_rules() -> dict[str, list[Rule]]:
    """Preconditions and symbolic effects of each subtask (multistep_sequences.py's `tasks`)."""
    rules: dict[str, list[Rule]] = {}
    for c in COLORS:
        block = f"{c}_block"
        others = [f"{o}_block" for o in COLORS if o != c]
        for d in ("right", "left"):
            for verb in ("rotate", "push"):
                rules[f"{verb}_{block}_{d}"] = [({block: "table", "grasped": 0}, {block: "table"})]
        grab = {block: "grasped", "grasped": 1}
        rules[f"lift_{block}_table"] = [({block: "table", "grasped": 0}, grab)]
        # a block in one slot of the sliding cabinet is reachable while the door covers the other slot
        rules[f"lift_{block}_slider"] = [({block: "slider_left", "slider": "right", "grasped": 0}, grab),
                                         ({block: "slider_right", "slider": "left", "grasped": 0}, grab)]
        rules[f"lift_{block}_drawer"] = [({block: "drawer", "drawer": "open", "grasped": 0}, grab)]
        rules.setdefault("place_in_slider", []).extend(
            ({block: "grasped", "slider": side, "grasped": 1}, {block: f"slider_{side}", "grasped": 0})
            for side in ("right", "left"))
        rules.setdefault("place_in_drawer", []).append(
            ({block: "grasped", "drawer": "open", "grasped": 1}, {block: "drawer", "grasped": 0}))
        for other in others:
            rules.setdefault("stack_block", []).append(
                ({block: "grasped", other: "table", "grasped": 1},
                 {block: "stacked_top", other: "stacked_bottom", "grasped": 0}))
            rules.setdefault("unstack_block", []).append(
                ({block: "stacked_top", other: "stacked_bottom", "grasped": 0}, {block: "table", other: "table"}))
        slots = ["slider_right", "slider_left"]
        rules.setdefault("push_into_drawer", []).append(
            ({block: "table", **{o: slots for o in others}, "drawer": "open", "grasped": 0},
             {block: "drawer", "grasped": 0}))
    rules["move_slider_left"] = [({"slider": "right", "grasped": 0}, {"slider": "left"})]
    rules["move_slider_right"] = [({"slider": "left", "grasped": 0}, {"slider": "right"})]
    rules["open_drawer"] = [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})]
    rules["close_drawer"] = [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})]
    for light in ("lightbulb", "led"):
        rules[f"turn_on_{light}"] = [({light: 0, "grasped": 0}, {light: 1})]
        rules[f"turn_off_{light}"] = [({light: 1, "grasped": 0}, {light: 0})]
    return rules


TASK_RULES = _task_rules()

Chain = tuple[dict[str, Any], tuple[str, ...]]


# -- the chain list ------------------------------------------------------------------------------------------------
def _holds(state: dict[str, Any], condition: dict[str, Any]) -> bool:
    return all(state[k] in v if isinstance(v, list) else state[k] == v for k, v in condition.items())


def next_states(state: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """The symbolic states a subtask can lead to from `state` (empty when it is impossible there)."""
    return [{**state, **effect} for condition, effect in TASK_RULES[task] if _holds(state, condition)]


def chain_is_valid(state: dict[str, Any], chain: Sequence[str]) -> bool:
    """Every subtask possible in exactly one way from the state its predecessors leave, no category twice
    (multistep_sequences.py's check_sequence)."""
    for task in chain:
        states = next_states(state, task)
        if len(states) != 1:
            return False
        state = states[0]
    categories = [TASK_CATEGORY[t] for t in chain]
    return len(categories) == len(set(categories))


def initial_states() -> list[dict[str, Any]]:
    """The 192 symbolic initial scenes: one or two blocks on the table, at most one block per cabinet slot."""
    states = []
    for values in product(*SCENE_VALUES.values()):
        if values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2:
            states.append(dict(zip(SCENE_VALUES, values)))
    return states


def _chains_for_state(state: dict[str, Any], count: int, seed: int) -> list[tuple[str, ...]]:
    # CALVIN seeds numpy's global (legacy) generator with the scene's index and draws 5 distinct subtasks
    # (`choice(..., replace=False)`, i.e. the first 5 of a permutation) until `count` valid chains are found; a
    # fresh RandomState(seed) produces the same draws. ~50 000 draws per scene: the cheap tests come first.
    rng = np.random.RandomState(seed)
    single = [len(next_states(state, t)) == 1 for t in TASK_NAMES]
    category = np.array([TASK_CATEGORY[t] for t in TASK_NAMES])
    chains: list[tuple[str, ...]] = []
    for _ in range(5_000_000):
        if len(chains) == count:
            return chains
        idx = rng.permutation(len(TASK_NAMES))[:CHAIN_LENGTH]
        if not single[idx[0]] or len(set(category[idx].tolist())) < CHAIN_LENGTH:
            continue
        chain = tuple(TASK_NAMES[i] for i in idx)
        if chain_is_valid(state, chain):
            chains.append(chain)
    raise DefiError(f"no {count} valid chains found from scene {state}")  # pragma: no cover - not for this table


class BenchmarkChains(Sequence):
    """CALVIN's evaluation chains as `get_sequences(total)` lists them (multistep_sequences.py): `total` chains
    spread evenly over the 192 initial scenes (earlier scenes get one more when it does not divide), generated per
    scene from seed = the scene's index, then all shuffled with seed 0.

    Chains are generated on first access, one scene at a time (about 0.3 s per scene), so evaluating the first
    few chains does not pay for all 1000."""

    def __init__(self, total: int = NUM_CHAINS) -> None:
        if total < 1:
            raise DefiError(f"num_chains={total}: expected >= 1")
        self.states = initial_states()
        counts = [len(part) for part in np.array_split(np.arange(total), len(self.states))]
        self._owner = [(s, p) for s, c in enumerate(counts) for p in range(c)]  # before the shuffle
        self._counts = counts
        order = list(range(total))
        np.random.RandomState(0).shuffle(order)  # the same swaps CALVIN's shuffle applies to its list of pairs
        self._order = order
        self._by_state: dict[int, list[tuple[str, ...]]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        s, p = self._owner[self._order[k]]
        if s not in self._by_state:
            self._by_state[s] = _chains_for_state(self.states[s], self._counts[s], seed=s)
        return dict(self.states[s]), self._by_state[s][p]


def benchmark_chains(num_chains: int = NUM_CHAINS) -> list[Chain]:
    """The first `num_chains` chains of CALVIN's 1000-chain evaluation list (a minute or so for all of them)."""
    chains = BenchmarkChains()
    if not 1 <= num_chains <= len(chains):
        raise DefiError(f"num_chains={num_chains}: expected 1..{len(chains)}")
    return chains[:num_chains]


def _check_chain(item: Any, where: str) -> Chain:
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], dict)
            and isinstance(item[1], (list, tuple))):
        raise DefiError(f"{where}: expected [initial_state, [task, ...]], got {str(item)[:80]}")
    state, tasks = dict(item[0]), tuple(str(t) for t in item[1])
    if set(state) != set(SCENE_VALUES):
        raise DefiError(f"{where}: initial state keys {sorted(state)}, expected {sorted(SCENE_VALUES)}")
    for key, value in state.items():
        if value not in SCENE_VALUES[key]:
            raise DefiError(f"{where}: initial state {key}={value!r}, expected one of {list(SCENE_VALUES[key])}")
    unknown = [t for t in tasks if t not in TASK_RULES]
    if unknown or not tasks:
        raise DefiError(f"{where}: unknown subtask {unknown[0]!r}" if unknown else f"{where}: no subtasks")
    # CALVIN hashes the state's values in this order to place the blocks (see initial_env_state)
    return {k: state[k] for k in SCENE_VALUES}, tasks


def load_chains(path: str | Path) -> list[Chain]:
    """A chain list from JSON: [[initial_state, [task, ...]], ...] (what `save_chains` writes)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DefiError(f"{path}: chain file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DefiError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list) or not data:
        raise DefiError(f"{path}: expected a non-empty JSON list of [initial_state, [task, ...]] pairs")
    return [_check_chain(item, f"{path}: chain {i}") for i, item in enumerate(data)]


def save_chains(chains: Iterable[Chain], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([[dict(s), list(t)] for s, t in chains], indent=1) + "\n")
    return path


# -- the simulator scene of a symbolic state -------------------------------------------------------------------
def fnv1_32(data: bytes, seed: int = 0) -> int:
    """32-bit FNV-1 (multiply, then xor each byte), the hash of pyhash.fnv1_32, whose default seed is 0."""
    h = seed
    for byte in data:
        h = ((h * 0x01000193) & 0xFFFFFFFF) ^ byte
    return h


def scene_seed(state: dict[str, Any]) -> int:
    """The seed CALVIN derives from a symbolic state: pyhash.fnv1_32(str(state.values())). pyhash hashes a Python
    3 str as UTF-16-LE without its byte-order mark (pyfasthash src/Hash.h), hence the encoding."""
    text = "dict_values([" + ", ".join(repr(state[k]) for k in SCENE_VALUES) + "])"
    return fnv1_32(text.encode("utf-16-le"))


# The robot's start pose and the block positions of the evaluation scenes (evaluation/utils.py's
# get_env_state_for_initial_condition).
_ROBOT_OBS = (0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963, -1.21779124,
              1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0)
_SLOT_POS = {"slider_left": (-2.40851662e-01, 9.24044687e-02, 4.60990009e-01),
             "slider_right": (7.03416330e-02, 9.24044687e-02, 4.60990009e-01)}
_TABLE_POS = ((5.00000896e-02, -1.20000177e-01, 4.59990009e-01), (2.29995412e-01, -1.19995140e-01, 4.59990010e-01))
_BLOCK_YAW = (math.pi / 2 - math.pi / 8, math.pi / 2 + math.pi / 8)


def initial_env_state(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs [15], scene_obs [24]) that calvin_env's reset places a chain's symbolic scene with.

    scene_obs: sliding door, drawer, button, switch, lightbulb, green light, then red, blue, pink block poses
    (x, y, z, euler x, y, z) (dataset/README.md). Which table spot each block takes and each block's yaw are
    drawn from a generator seeded with `scene_seed(state)`, so a scene is the same in every run.
    """
    state = _check_chain([state, ["open_drawer"]], "initial state")[0]
    rng = np.random.RandomState(scene_seed(state))
    table = [np.array(p) for p in _TABLE_POS]
    rng.shuffle(table)
    scene = np.zeros(24)
    scene[0] = 0.28 if state["slider"] == "left" else 0.0
    scene[1] = 0.22 if state["drawer"] == "open" else 0.0
    scene[3] = 0.088 if state["lightbulb"] == 1 else 0.0
    scene[4], scene[5] = state["lightbulb"], state["led"]
    for i, color in enumerate(COLORS):
        where = state[f"{color}_block"]
        if where in _SLOT_POS:
            pos = np.array(_SLOT_POS[where])
        elif color == "red":
            pos = table[0]
        elif color == "blue":
            pos = table[1] if state["red_block"] == "table" else table[0]
        else:
            pos = table[1]
        scene[6 * i + 6: 6 * i + 9] = pos
        scene[6 * i + 11] = rng.uniform(*_BLOCK_YAW)  # drawn for every block, placed or not, as CALVIN does
    return np.array(_ROBOT_OBS), scene


# -- results arithmetic ------------------------------------------------------------------------------------------
def chain_success_rates(lengths: Sequence[int], chain_length: int = CHAIN_LENGTH) -> list[float]:
    """Share of chains that completed at least k subtasks, k = 1..chain_length (evaluation/utils.py)."""
    if not lengths:
        return [float("nan")] * chain_length
    counts = Counter(int(n) for n in lengths)
    return [sum(counts[j] for j in range(k, chain_length + 1)) / len(lengths) for k in range(1, chain_length + 1)]


def summarise_chains(lengths: Sequence[int], chains: Sequence[Chain]) -> dict[str, Any]:
    """Average length, success rate for 1..5 chained subtasks and per-subtask success counts."""
    success: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for n, (_, tasks) in zip(lengths, chains):
        for task in tasks[:n]:
            success[task] += 1
            total[task] += 1
        if n < len(tasks):
            total[tasks[n]] += 1
    rates = chain_success_rates(lengths)
    return {
        "num_chains": len(lengths),
        "avg_len": float(np.mean(lengths)) if len(lengths) else float("nan"),
        "chain_sr": {str(k + 1): r for k, r in enumerate(rates)},
        "task_info": {t: {"success": success[t], "total": total[t], "success_rate": success[t] / total[t]}
                      for t in sorted(total)},
    }


# -- the policy adapter ------------------------------------------------------------------------------------------
class CalvinPolicyAdapter:
    """calvin's `CalvinBaseModel` interface (`reset()`, `step(obs, goal) -> action`) over a defi policy.

    `step` maps calvin_env's observation ({"rgb_obs": {"rgb_static", "rgb_gripper"}, "robot_obs", ...}) to the
    Policy API's ({"observation.images.static", "observation.images.gripper", "observation.state"}), resized to the
    policy's image size as the clip sampler resizes training frames, asks the policy for an action chunk when its
    queue is empty and returns the chunk's actions one per step (receding horizon: `execute_steps` of each chunk,
    default the whole chunk). `goal` is the instruction string, as calvin's evaluate_policy.py passes it.

    Actions go out as calvin_env expects them (calvin_env/robot/robot.py): relative actions as a 7-vector scaled
    like the dataset's `rel_actions`, clipped to [-1, 1], gripper exactly -1 (close) or 1 (open); absolute ones
    as ((x, y, z), (euler x, y, z), gripper).
    """

    def __init__(self, policy: Any, execute_steps: int | None = None, actions: Literal["rel", "abs"] = "rel",
                 clip: bool = True) -> None:
        from defi.policies.base import policy_metadata  # torch: imported when a policy is driven

        meta = policy_metadata(policy)
        self.policy = policy
        self.cameras = list(meta.cameras)
        h, w = meta.image_size
        self.image_size = (int(h), int(w))
        self.state_dim = int(meta.state_dim)
        self.action_dim = int(meta.action_dim)
        unknown = [c for c in self.cameras if c not in ("static", "gripper")]
        if unknown:
            raise DefiError(f"policy cameras {self.cameras}: CALVIN renders 'static' and 'gripper' only")
        if self.action_dim != 7:
            raise DefiError(f"policy action_dim={self.action_dim}: CALVIN needs 7 (position, euler angles, gripper)")
        if self.state_dim not in (0, 15):
            raise DefiError(f"policy state_dim={self.state_dim}: CALVIN's robot_obs has 15 values (or use 0)")
        self.execute_steps = int(meta.action_horizon) if execute_steps is None else int(execute_steps)
        if self.execute_steps < 1:
            raise DefiError(f"execute_steps={execute_steps}: expected >= 1")
        if actions not in ("rel", "abs"):
            raise DefiError(f"actions={actions!r}: expected 'rel' or 'abs'")
        self.actions = actions
        self.clip = clip
        self.queue: deque[np.ndarray] = deque()
        self.calls = 0
        self.policy_seconds = 0.0

    def reset(self, seed: int | None = None) -> None:
        """Start a subtask: an empty action queue, and the policy's episode state reset (`seed`: its sampling
        noise for this subtask, so that a rerun, a resumed run or a shard repeats every action)."""
        self.queue.clear()
        self.policy.reset(seed=seed)

    def observation(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """calvin_env observation -> Policy API observation."""
        rgb = obs.get("rgb_obs", {})
        out: dict[str, np.ndarray] = {}
        for cam in self.cameras:
            key = f"rgb_{cam}"
            if key not in rgb:
                raise DefiError(f"calvin observation has no rgb_obs[{key!r}] (has {sorted(rgb)}); the policy "
                                f"uses cameras {self.cameras}")
            out[f"observation.images.{cam}"] = _resize_image(np.asarray(rgb[key]), self.image_size)
        if self.state_dim:
            if "robot_obs" not in obs:
                raise DefiError(f"calvin observation has no robot_obs (has {sorted(obs)}); the policy reads a "
                                f"{self.state_dim}-dim state")
            out["observation.state"] = np.asarray(obs["robot_obs"], dtype=np.float32)
        return out

    def step(self, obs: dict[str, Any], goal: str) -> Any:
        if not self.queue:
            start = time.perf_counter()
            chunk = np.asarray(self.policy.act(self.observation(obs), goal), dtype=np.float32)
            self.policy_seconds += time.perf_counter() - start
            self.calls += 1
            if chunk.ndim != 2 or chunk.shape[1] != 7 or len(chunk) == 0:
                raise DefiError(f"policy.act returned shape {list(chunk.shape)}; expected an action chunk [H, 7]")
            self.queue.extend(chunk[: self.execute_steps])
        return self.to_env_action(self.queue.popleft())

    def to_env_action(self, action: np.ndarray) -> Any:
        # a fresh float64 array each step: calvin_env scales relative actions in place
        a = np.array(action, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise DefiError(f"policy returned a non-finite action {a.tolist()}")
        gripper = 1 if a[6] >= 0 else -1
        if self.actions == "abs":
            return (a[:3], a[3:6], gripper)
        if self.clip:
            a[:6] = np.clip(a[:6], -1.0, 1.0)
        a[6] = gripper
        return a


def _resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DefiError(f"calvin camera image: expected uint8 [h, w, 3], got {img.dtype} {list(img.shape)}")
    if img.shape[:2] == size:
        return img
    import torch

    # the clip sampler's resize (defi.data.clips): bilinear with antialiasing, rounded back to uint8
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


# -- the loop --------------------------------------------------------------------------------------------------
@dataclass
class CalvinEvalConfig(Config):
    num_chains: int = NUM_CHAINS
    """Evaluate the first num_chains chains of the list (the benchmark uses all 1000)."""
    chains_file: Path | None = None
    """A JSON chain list ([[initial_state, [task, ...]], ...]); default: regenerate CALVIN's fixed list."""
    steps_per_subtask: int = STEPS_PER_SUBTASK
    execute_steps: int | None = None
    """Actions executed from each predicted chunk before asking the policy again; default: the whole chunk."""
    actions: Literal["rel", "abs"] = "rel"
    """The action space the policy was trained on: rel_actions (default) or absolute tcp poses."""
    shard: tuple[int, int] = (0, 1)
    """(index, count): evaluate only chains i with i % count == index, to split a run over machines."""
    video_chains: int = 5
    """Write an mp4 of the first video_chains chains of this shard (static and gripper views side by side)."""
    video_fps: int = 30
    resume: bool = True
    """Skip chains already recorded in out_dir/chains.jsonl (an interrupted run continues where it stopped)."""
    oracle_file: Path | None = None
    """A calvin task-oracle YAML (`tasks: {name: [method, *args]}`); default: the built-in ORACLE_TASKS."""
    seed: int | None = 0
    """The policy's sampling noise: subtask k of chain i is reset with seed (seed * 1e6 + i) * 100 + k, so a
    shard, a resumed run or a rerun repeats every action; None: unseeded (the global generator)."""

    def validate(self) -> None:
        self.check(self.num_chains >= 1, "num_chains", ">= 1")
        self.check(self.steps_per_subtask >= 1, "steps_per_subtask", ">= 1")
        self.check(self.execute_steps is None or self.execute_steps >= 1, "execute_steps", ">= 1 (or None)")
        self.check(self.shard[1] >= 1 and 0 <= self.shard[0] < self.shard[1], "shard",
                   "(index, count) with 0 <= index < count")
        self.check(self.video_chains >= 0, "video_chains", ">= 0")
        self.check(self.video_fps >= 1, "video_fps", ">= 1")
        self.check(self.seed is None or self.seed >= 0, "seed", ">= 0 (or None)")


@dataclass
class ChainResult:
    chain: int
    initial_state: dict[str, Any]
    tasks: list[str]
    completed: int
    steps: list[int]
    """Steps each attempted subtask took (the last one is steps_per_subtask when it failed)."""
    video: str | None = None


def run_chain(model: Any, env: Any, oracle: Any, state: dict[str, Any], tasks: Sequence[str],
              steps_per_subtask: int = STEPS_PER_SUBTASK, instructions: dict[str, str] | None = None,
              record: Callable[[dict[str, Any]], None] | None = None,
              seed: int | None = None) -> tuple[int, list[int]]:
    """Run one chain (evaluate_policy.py's evaluate_sequence and rollout): (subtasks completed, steps of each
    attempted subtask). `record` is called with every observation (for videos). With `seed`, subtask k resets
    the model with seed + k (its sampling noise); without, `model.reset()` is called as CALVIN calls it."""
    instructions = instructions or VALIDATION_INSTRUCTIONS
    robot_obs, scene_obs = initial_env_state(state)
    env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    completed, used = 0, []
    obs = None
    for task in tasks:
        obs = env.get_obs()
        if seed is None:
            model.reset()
        else:
            model.reset(seed=seed + completed)
        start_info = env.get_info()
        solved = False
        for step in range(steps_per_subtask):
            if record is not None:
                record(obs)
            obs, _, _, info = env.step(model.step(obs, instructions[task]))
            # success is judged against the state at the subtask's start, at every step
            if oracle.get_task_info_for_set(start_info, info, {task}):
                solved = True
                break
        used.append(step + 1)
        if not solved:
            break
        completed += 1
    if record is not None and obs is not None:
        record(obs)
    return completed, used


class _VideoStream:
    """An H.264 mp4 written frame by frame (a 5-subtask chain is up to 1800 frames: too many to hold), with the
    static and gripper views side by side."""

    def __init__(self, path: Path, fps: int) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.pix_fmt = "yuv420p"
        self.size: tuple[int, int] | None = None

    def __call__(self, obs: dict[str, Any]) -> None:
        import av

        frame = _video_frame(obs)
        if self.size is None:
            self.size = (frame.shape[0] - frame.shape[0] % 2, frame.shape[1] - frame.shape[1] % 2)  # yuv420p
            self.stream.height, self.stream.width = self.size
        frame = np.ascontiguousarray(frame[: self.size[0], : self.size[1]])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _video_frame(obs: dict[str, Any]) -> np.ndarray:
    rgb = obs.get("rgb_obs", {})
    static = np.asarray(rgb["rgb_static"], dtype=np.uint8)
    if "rgb_gripper" not in rgb:
        return static
    gripper = _resize_image(np.asarray(rgb["rgb_gripper"], dtype=np.uint8), static.shape[:2])
    return np.concatenate([static, gripper], axis=1)


def _read_done(path: Path, chains: Sequence[Chain], num_chains: int) -> dict[int, ChainResult]:
    """Chains recorded by an earlier run into this directory. A cut-off last line (a run killed while writing it)
    is dropped and the file rewritten without it, so that new records start on a line of their own."""
    done: dict[int, ChainResult] = {}
    if not path.is_file():
        return done
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for lineno, line in enumerate(lines, 1):
        try:
            r = ChainResult(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as err:
            if lineno == len(lines):
                break
            raise DefiError(f"{path}:{lineno}: corrupt chain record ({err}); delete the file to start over") from None
        kept.append(line)
        if r.chain >= num_chains:
            continue  # recorded by a run over more chains: not part of this evaluation
        if list(chains[r.chain][1]) != r.tasks or dict(chains[r.chain][0]) != r.initial_state:
            raise DefiError(f"{path}:{lineno}: chain {r.chain} was recorded for another chain list; use a new "
                            "out_dir or resume=False")
        done[r.chain] = r
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return done


def evaluate_calvin(model: Any, env: Any, oracle: Any, cfg: CalvinEvalConfig, out_dir: str | Path,
                    chains: Sequence[Chain] | None = None, label: str = "policy",
                    progress: bool = True) -> dict[str, Any]:
    """Run the protocol for `model` (a `CalvinPolicyAdapter` or any object with reset/step) in `env` (calvin_env's
    PlayTableSimEnv or a stand-in with reset/get_obs/get_info/step), judged by `oracle` (an object with
    calvin_env's `get_task_info_for_set`). Writes `results.json` and `chains.jsonl` (one line per finished chain,
    for resuming) and videos under `out_dir`; returns the results."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if chains is None:
        chains = load_chains(cfg.chains_file) if cfg.chains_file else BenchmarkChains()
    if cfg.num_chains > len(chains):
        raise DefiError(f"num_chains={cfg.num_chains}: the chain list has only {len(chains)}")
    index, count = cfg.shard
    mine = [i for i in range(cfg.num_chains) if i % count == index]
    record = out_dir / "chains.jsonl"
    if not cfg.resume and record.exists():
        record.unlink()
    done = _read_done(record, chains, cfg.num_chains)
    start = time.perf_counter()
    bar = tqdm(total=len(mine), initial=sum(i in done for i in mine), desc="calvin", disable=not progress,
               dynamic_ncols=True)
    with record.open("a") as log:
        for n, i in enumerate(mine):
            if i in done:
                continue
            state, tasks = chains[i]
            stream = _VideoStream(out_dir / "videos" / f".chain{i:04d}.tmp.mp4", cfg.video_fps) \
                if n < cfg.video_chains else None
            try:
                seed = None if cfg.seed is None else (cfg.seed * 1_000_000 + i) * 100
                completed, steps = run_chain(model, env, oracle, state, tasks, cfg.steps_per_subtask, record=stream,
                                             seed=seed)
            finally:
                if stream is not None:
                    stream.close()
            video = None
            if stream is not None:
                video = str(out_dir / "videos" / f"chain{i:04d}_{completed}of{len(tasks)}.mp4")
                os.replace(stream.path, video)
            done[i] = ChainResult(i, dict(state), list(tasks), completed, steps, video)
            log.write(json.dumps(done[i].__dict__) + "\n")
            log.flush()
            lengths = [done[j].completed for j in mine if j in done]
            bar.set_postfix_str(" ".join(f"{k + 1}:{100 * r:.0f}%" for k, r in enumerate(chain_success_rates(lengths)))
                                + f" len {np.mean(lengths):.2f}")
            bar.update(1)
    bar.close()
    results = [done[i] for i in mine]
    summary = summarise_chains([r.completed for r in results], [chains[r.chain] for r in results])
    metrics = {
        "label": label,
        **summary,
        "shard": list(cfg.shard),
        "policy_calls": int(getattr(model, "calls", 0)),
        "policy_ms_per_call": 1000.0 * getattr(model, "policy_seconds", 0.0) / max(getattr(model, "calls", 0), 1),
        "wall_time_s": time.perf_counter() - start,
        "config": to_dict(cfg),
        "chains": [r.__dict__ for r in results],
    }
    _write_json(out_dir / "results.json", metrics)
    return metrics


def merge_results(out_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Combine the chains.jsonl of several shards (or runs) into one summary; chains evaluated twice count once."""
    by_chain: dict[int, dict[str, Any]] = {}
    for d in out_dirs:
        path = Path(d) / "chains.jsonl"
        if not path.is_file():
            raise DefiError(f"{path}: missing (not a CALVIN evaluation directory?)")
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    r = json.loads(line)
                    by_chain[int(r["chain"])] = r
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                    raise DefiError(f"{path}:{lineno}: corrupt chain record ({err})") from None
    rows = [by_chain[i] for i in sorted(by_chain)]
    summary = summarise_chains([r["completed"] for r in rows],
                               [(r["initial_state"], tuple(r["tasks"])) for r in rows])
    merged = {**summary, "merged_from": [str(d) for d in out_dirs], "chains": rows}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        _write_json(Path(out) / "results.json", merged)
    return merged


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def format_results(metrics: dict[str, Any]) -> str:
    """The one-line table the papers print: success for 1..5 chained subtasks and the average length."""
    sr = metrics["chain_sr"]
    head = "| chains | " + " | ".join(f"{k}/5" for k in sr) + " | Avg. Len. |"
    row = f"| {metrics['num_chains']} | " + " | ".join(f"{100 * v:.1f}%" for v in sr.values()) \
        + f" | {metrics['avg_len']:.2f} |"
    return "\n".join([head, "|" + "---|" * (len(sr) + 2), row])


# -- calvin_env ----------------------------------------------------------------------------------------------------
CALVIN_INSTALL_HINT = (
    "calvin_env is not installed (it is not on PyPI): git clone --recurse-submodules "
    "https://github.com/mees/calvin.git, then pip install -e calvin/calvin_env/tacto -e calvin/calvin_env "
    "-r calvin/calvin_env/requirements.txt (see the README's CALVIN section)"
)


def make_calvin_env(dataset: str | Path, show_gui: bool = False) -> Any:
    """calvin_env's simulator configured from a CALVIN dataset's validation split (as evaluate_policy.py's
    make_env does), rendering only the static and gripper cameras."""
    dataset = Path(dataset)
    val = dataset / "validation"
    conf = val / ".hydra" / "merged_config.yaml"
    if not conf.is_file():
        raise DefiError(f"{conf}: missing; --dataset must be a CALVIN split root such as task_ABC_D (its validation/"
                        "folder configures the simulator)")
    try:
        from calvin_env.envs.play_table_env import get_env
    except ImportError as err:
        raise DefiError(f"{CALVIN_INSTALL_HINT} ({err})") from None
    # the tactile sensors do not take part in the protocol; not rendering them only saves time
    obs_space = {"rgb_obs": ["rgb_static", "rgb_gripper"], "depth_obs": []}
    return get_env(val, obs_space=obs_space, show_gui=show_gui)


def make_task_oracle(oracle_file: str | Path | None = None) -> Any:
    """calvin_env's task oracle with the evaluation's subtask definitions (or those of a calvin task YAML)."""
    try:
        from calvin_env.envs.tasks import Tasks
    except ImportError as err:
        raise DefiError(f"{CALVIN_INSTALL_HINT} ({err})") from None
    tasks: Any = ORACLE_TASKS
    if oracle_file is not None:
        from omegaconf import OmegaConf  # a calvin_env dependency

        if not Path(oracle_file).is_file():
            raise DefiError(f"{oracle_file}: task oracle file not found")
        conf = OmegaConf.load(oracle_file)
        tasks = conf.get("tasks", conf)
    oracle = Tasks(tasks)
    # an undefined subtask would simply never succeed: say so instead
    missing = sorted(set(TASK_NAMES) - set(oracle.tasks))
    if missing:
        raise DefiError(f"{oracle_file}: the task oracle does not define {', '.join(missing)}")
    return oracle


@dataclass
class CalvinEvalRunConfig(Config):
    """Evaluate a saved policy with CALVIN's long-horizon protocol (calvin_env is installed separately)."""

    policy: Path = Path("runs/finetune/calvin")
    """A saved policy directory, or a run directory holding model/ (default: `defi finetune --preset
    calvin-paper`'s)."""
    dataset: Path = Path("data/calvin/task_ABC_D")
    """The CALVIN split root; its validation/ folder configures the simulator (scene D for ABC->D)."""
    out_dir: Path = Path("runs/eval-calvin")
    device: str = "auto"
    eval: CalvinEvalConfig = field(default_factory=CalvinEvalConfig)

    default_preset: ClassVar[str] = "paper"


def run_calvin_eval(cfg: CalvinEvalRunConfig) -> dict[str, Any]:
    """Load the policy, build calvin_env and its oracle, run the protocol; returns the results (results.json)."""
    from defi.config import save_config, validate_config

    validate_config(cfg)
    env = make_calvin_env(cfg.dataset)
    oracle = make_task_oracle(cfg.eval.oracle_file)
    from defi.policies import load_policy  # torch and the policy classes: imported when a run starts

    policy = load_policy(cfg.policy, device=cfg.device)
    model = CalvinPolicyAdapter(policy, execute_steps=cfg.eval.execute_steps, actions=cfg.eval.actions)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out_dir) / "config.json")
    metrics = evaluate_calvin(model, env, oracle, cfg.eval, cfg.out_dir, label=str(cfg.policy))
    print(format_results(metrics))
    print(f"wrote {Path(cfg.out_dir) / 'results.json'}")
    return metrics


@dataclass
class CalvinMergeConfig(Config):
    """Combine the chains.jsonl of sharded `defi eval-calvin` runs into one results.json and print the table."""

    shards: tuple[Path, ...] = ()
    """Output directories of `eval-calvin` runs (shards of one evaluation) to combine."""
    out_dir: Path = Path("runs/eval-calvin")

    def validate(self) -> None:
        self.check(len(self.shards) >= 1, "shards", "at least one evaluation directory")


def run_calvin_merge(cfg: CalvinMergeConfig) -> dict[str, Any]:
    """Combine sharded evaluations into one results.json and print the table."""
    metrics = merge_results(cfg.shards, cfg.out_dir)
    print(format_results(metrics))
    print(f"wrote {Path(cfg.out_dir) / 'results.json'}")
    return metrics


@preset(CalvinEvalRunConfig, "paper")
def _paper() -> CalvinEvalRunConfig:
    """The benchmark: 1000 chains, 360 steps per subtask, the whole predicted chunk executed."""
    return CalvinEvalRunConfig()


@preset(CalvinEvalRunConfig, "smoke")
def _smoke() -> CalvinEvalRunConfig:
    """A few chains, to check a set-up end to end before the hours-long run (not a comparable number)."""
    return CalvinEvalRunConfig(out_dir=Path("runs/eval-calvin-smoke"), eval=CalvinEvalConfig(num_chains=10,
                                                                                              video_chains=2))
