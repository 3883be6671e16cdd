"""The policy registry, the scripted Meta-World expert, per-connection forks and the wire codec (no sockets)."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy as openpi_msgpack

from defi.config import save_config
from defi.errors import CheckpointError, ConfigError, DefiError
from defi.policies import POLICY_TYPES, load_policy, register_policy
from defi.policies.scripted import ScriptedConfig as ScriptedMetaWorldConfig
from defi.policies.scripted import ScriptedPolicy as ScriptedMetaWorldPolicy
from defi.serve import PolicyServer, ServeConfig
from defi.serve.protocol import PolicyOutputError, RequestError, RequestSpec, check_actions, packb, unpackb
from defi.utils.environment import resolve_device

pytestmark = [  # third-party noise: openpi-client's direct websockets.connect, gymnasium's env checker
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker"),
    # the policy's own filter for the experts' gain warning is reset by pytest between tests
    pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high:UserWarning"),
]



def test_scripted_policy_round_trips_and_matches_the_expert(tmp_path):
    import gymnasium as gym
    import metaworld  # noqa: F401
    from metaworld.policies import SawyerDrawerOpenV3Policy

    policy = ScriptedMetaWorldPolicy(ScriptedMetaWorldConfig(task="drawer-open-v3", cameras=("corner",)))
    policy.save_pretrained(tmp_path / "expert")
    assert json.loads((tmp_path / "expert" / "config.json").read_text())["_type"] == "scripted"
    loaded = load_policy(tmp_path / "expert", device="cpu")
    assert isinstance(loaded, ScriptedMetaWorldPolicy)
    assert loaded.metadata.to_dict() == {"policy_type": "scripted", "task": "drawer-open-v3", "cameras": ["corner"],
                                         "image_size": [64, 64], "action_dim": 4, "action_horizon": 1,
                                         "state_dim": 39, "sampling_steps": None}
    env = gym.make("Meta-World/MT1", env_name="drawer-open-v3", seed=3)
    obs, _ = env.reset(seed=3)
    chunk = loaded.act({"observation.state": obs.astype(np.float32)}, "open the drawer")
    assert chunk.dtype == np.float32 and chunk.shape == (1, 4)
    expected = SawyerDrawerOpenV3Policy().get_action(obs.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(chunk[0], expected, rtol=1e-6)
    assert np.abs(chunk).sum() > 0
    with pytest.raises(DefiError, match=r"observation.state: expected shape \[39\].*got \[4\]"):
        loaded.act({"observation.state": np.zeros(4, np.float32)}, "x")
    with pytest.raises(DefiError, match="needs 'observation.state'"):
        loaded.act({}, "x")


def test_bad_scripted_config_names_the_field():
    with pytest.raises(ConfigError, match="task='fly-v3'"):
        ScriptedMetaWorldConfig(task="fly-v3").validate()


def test_load_policy_errors_and_run_directories(tmp_path):
    with pytest.raises(CheckpointError, match="no saved policy here"):
        load_policy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_type": "FancyConfig"}))
    with pytest.raises(CheckpointError, match=r"_type='FancyConfig'.*scripted"):
        load_policy(tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the policy config"):
        load_policy(tmp_path / "broken")
    # a training run directory: its own config.json is the stage config, the policy is in model/
    run = tmp_path / "run"
    save_config(ServeConfig(), run / "config.json")
    ScriptedMetaWorldPolicy().save_pretrained(run / "model")
    assert isinstance(load_policy(run, device="cpu"), ScriptedMetaWorldPolicy)
    # a saved policy whose config is invalid reports the field
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"_type": "scripted", "image_size": -1}))
    with pytest.raises(ConfigError, match="image_size"):
        load_policy(tmp_path / "bad")


def test_register_policy_and_device_placement(tmp_path):
    import torch

    class TinyTorchConfig(ScriptedMetaWorldConfig):
        type_name = "tiny_torch"

    class TinyTorchPolicy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(39, 4)

        @classmethod
        def from_pretrained(cls, directory):
            return cls()

    import sys
    import types

    module = types.ModuleType("defi_test_tiny_policy")
    module.TinyTorchPolicy = TinyTorchPolicy
    sys.modules[module.__name__] = module
    try:
        register_policy("tiny_torch", "defi_test_tiny_policy:TinyTorchPolicy")
        save_config(TinyTorchConfig(), tmp_path / "config.json")
        policy = load_policy(tmp_path, device="auto")
        assert isinstance(policy, TinyTorchPolicy) and not policy.training
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert resolve_device("auto") == expected
        assert policy.head.weight.device.type == expected
    finally:
        POLICY_TYPES.pop("tiny_torch", None)
        del sys.modules[module.__name__]
    with pytest.raises(ValueError, match="module:Class"):
        register_policy("X", "no_colon")


@pytest.mark.parametrize("kind", ["defi", "image_dp"])
def test_forks_share_every_tensor_and_isolate_episode_state(kind):
    """What the server gives each connection: a fork sharing every weight (the frozen encoders included)."""
    import torch

    from defi.models.encoders import shared_encoders
    from defi.policies import policy_class
    from defi.policies.base import PolicyConfig

    cls = policy_class(kind)
    policy = cls(cls.config_class.preset("tiny"))
    assert isinstance(policy.config, PolicyConfig)
    stats = {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)}
    policy.normalizer.set_stats({"action": stats, "observation.state": stats})
    obs = {"observation.images.corner": np.zeros((32, 32, 3), np.uint8), "observation.state": np.zeros(4, np.float32)}
    policy.act(obs, "reach the goal")  # builds the shared frozen encoders
    encoders = len(shared_encoders())
    forks = [policy.fork() for _ in range(16)]
    for fork in forks:
        assert fork is not policy
        pairs = zip((*policy.parameters(), *policy.buffers()), (*fork.parameters(), *fork.buffers()))
        assert all(a.data_ptr() == b.data_ptr() for a, b in pairs)
        fork.act(obs, "reach the goal")
    assert len(shared_encoders()) == encoders  # no fork built or copied an encoder
    forks[0].reset(seed=1)
    assert forks[0]._generator is not None and policy._generator is None and forks[1]._generator is None
    a = forks[0].act(obs, "reach the goal")
    forks[1].reset(seed=1)
    np.testing.assert_array_equal(forks[1].act(obs, "reach the goal"), a)
    assert torch.equal(next(policy.parameters()), next(forks[5].parameters()))


def test_a_policy_that_cannot_be_forked_is_refused_at_start_up():
    class Unforkable:
        metadata = {"policy_type": "x", "cameras": [], "action_dim": 1, "action_horizon": 1, "state_dim": 0}

        def act(self, observation, instruction):
            return np.zeros((1, 1), np.float32)

    with pytest.raises(DefiError, match="has no fork\\(\\)"):
        PolicyServer(Unforkable(), ServeConfig(port=0))


def test_codec_is_byte_identical_to_openpi_and_reads_its_frames():
    message = {
        "observation/images/corner": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "observation/state": np.linspace(0, 1, 39, dtype=np.float32),
        "scalar": np.float64(2.5),
        "prompt": "open the drawer",
        "nested": {"flag": True, "ints": [1, 2, 3]},
    }
    assert packb(message) == openpi_msgpack.packb(message)
    decoded = unpackb(openpi_msgpack.packb(message))
    np.testing.assert_array_equal(decoded["observation/images/corner"], message["observation/images/corner"])
    assert decoded["observation/state"].dtype == np.float32 and decoded["scalar"] == 2.5
    back = openpi_msgpack.unpackb(packb({"actions": np.ones((4, 7), np.float32)}))
    np.testing.assert_array_equal(back["actions"], np.ones((4, 7), np.float32))
    with pytest.raises(TypeError, match="object"):
        packb({"x": np.array([object()])})


def _array_frame(data: bytes, dtype: str, shape: list) -> bytes:
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"\xc1\xff\x00garbage", "not valid msgpack"),
        (msgpack.packb({"a": 1})[:-1], "not valid msgpack"),
        (_array_frame(b"\x00" * 8, "|O", [1]), "only bool, integer and float"),
        (_array_frame(b"\x00" * 8, "<c8", [1]), "only bool, integer and float"),
        (_array_frame(b"\x00" * 8, "nonsense", [1]), "not a numpy dtype"),
        (_array_frame(b"\x00" * 7, "<f4", [2]), "needs 8 bytes, got 7"),
        (_array_frame(b"\x00" * 8, "<f4", [-2]), "non-negative integers"),
        (_array_frame(b"\x00" * 8, "<f4", "2"), "non-negative integers"),
        (msgpack.packb({"x": {b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}}), "does not fit"),
    ],
    ids=["garbage", "truncated", "object", "complex", "bad-dtype", "short-buffer", "negative-shape", "str-shape",
         "scalar-overflow"],
)
def test_codec_refuses_malformed_frames(frame, message):
    with pytest.raises(RequestError, match=message):
        unpackb(frame)


def test_actions_that_must_not_reach_a_robot_are_refused():
    import torch

    spec = RequestSpec(action_dim=4, action_horizon=2)
    assert check_actions(torch.zeros(2, 4, dtype=torch.float64), spec).dtype == np.float32
    with pytest.raises(PolicyOutputError, match="NaN or infinite"):
        check_actions(np.array([[0, 0, np.nan, 0], [0, 0, 0, 0]]), spec)
    with pytest.raises(PolicyOutputError, match=r"shape \[2, 3\], expected \[2, 4\]"):
        check_actions(np.zeros((2, 3)), spec)
    with pytest.raises(PolicyOutputError, match=r"shape \[4\]"):
        check_actions(np.zeros(4), spec)
