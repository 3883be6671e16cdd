"""Policy types and `load_policy`: open any saved policy directory without knowing its class.

Every policy implements the policy API (issue 6):

    policy.reset() -> None
    policy.act(observation: dict, instruction: str) -> np.ndarray     # float32 [H, A], unnormalised
    policy.metadata -> dict   # cameras, image_size, action_dim, action_horizon, state_dim, policy_type
    Policy.from_pretrained(dir) / policy.save_pretrained(dir)

A saved policy directory holds `config.json` whose `_type` field (written by `save_config`) names the config
class. `POLICY_TYPES` maps that name to the policy class as a "module:Class" string, so that registering a type
costs one line and importing this module stays light (the class is imported only when a policy of that type is
loaded).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from defi.config import Config, load_config, save_config
from defi.errors import CheckpointError, DefiError

CONFIG_NAME = "config.json"

# config class name (the `_type` in config.json) -> "module:PolicyClass". One line per policy type.
POLICY_TYPES: dict[str, str] = {
    "ScriptedMetaWorldConfig": "defi.policies:ScriptedMetaWorldPolicy",
}


@runtime_checkable
class Policy(Protocol):
    """What the server, the evaluation loops and the robot client expect of a policy."""

    @property
    def metadata(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def act(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...


def register_policy(config_type: str, target: str) -> None:
    """Register a policy type at run time (`target` is "module:Class"); prefer a line in `POLICY_TYPES`."""
    if ":" not in target:
        raise ValueError(f"policy target {target!r}: expected 'module:Class'")
    POLICY_TYPES[config_type] = target


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_type(config_path: Path) -> str | None:
    try:
        data = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: cannot read the policy config ({err})") from None
    return data.get("_type") if isinstance(data, dict) else None


def find_policy_dir(path: str | Path) -> tuple[Path, str]:
    """The directory holding a saved policy and its config type; a run directory's `model/` is accepted too."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no saved policy here (expected a directory with {CONFIG_NAME})")
    tried = []
    for candidate in (path, path / "model"):
        config_path = candidate / CONFIG_NAME
        if not config_path.is_file():
            continue
        config_type = _read_type(config_path)
        if config_type in POLICY_TYPES:
            return candidate, config_type
        tried.append(f"{config_path} has _type={config_type!r}")
    found = "; ".join(tried) if tried else f"no {CONFIG_NAME} in {path} or {path / 'model'}"
    raise CheckpointError(
        f"{path}: not a saved policy ({found}); expected a `_type` among {sorted(POLICY_TYPES)}"
    )


def policy_class(config_type: str) -> type:
    target = POLICY_TYPES.get(config_type)
    if target is None:
        raise CheckpointError(f"unknown policy type {config_type!r} (registered: {sorted(POLICY_TYPES)})")
    module_name, class_name = target.split(":")
    return getattr(import_module(module_name), class_name)


def load_policy(path: str | Path, device: str = "auto") -> Policy:
    """Load a saved policy of any registered type and move it to `device` ("auto" picks the GPU when present)."""
    directory, config_type = find_policy_dir(path)
    policy = policy_class(config_type).from_pretrained(directory)
    to = getattr(policy, "to", None)
    if callable(to):  # torch policies: nn.Module.to returns the module itself
        policy = to(resolve_device(device)) or policy
    if callable(getattr(policy, "eval", None)):
        policy.eval()
    return policy


# ---------------------------------------------------------------------------------------------------------------
# Meta-World v3 scripted expert as a policy: a real closed-loop policy for the server's tests and examples, and a
# ceiling for evaluation. It reads the full 39-dim Meta-World observation from `observation.state`.


@dataclass
class ScriptedMetaWorldConfig(Config):
    task: str = "reach-v3"
    # Cameras a robot loop must send (validated by the server, ignored by the expert, which reads only the state).
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    image_size: int = 64

    def validate(self) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self.check(self.task in ENV_POLICY_MAP, "task", f"a Meta-World v3 task with a scripted expert, one of "
                   f"{sorted(ENV_POLICY_MAP)}")
        self.check(len(set(self.cameras)) == len(self.cameras), "cameras", "distinct camera names")
        self.check(self.image_size > 0, "image_size", "a positive integer")


class ScriptedMetaWorldPolicy:
    """`metaworld.policies.Sawyer<Task>V3Policy` behind the policy API (one-step chunks: it replans every step)."""

    config_class = ScriptedMetaWorldConfig
    state_dim = 39
    action_dim = 4

    def __init__(self, config: ScriptedMetaWorldConfig | None = None):
        from metaworld.policies import ENV_POLICY_MAP

        self.config = config or ScriptedMetaWorldConfig()
        self.config.validate()
        self._expert = ENV_POLICY_MAP[self.config.task]()
        # The experts' gains trip this warning on every step; the environment clips actions to [-1, 1] anyway.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld")

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "policy_type": type(self).__name__,
            "task": self.config.task,
            "cameras": list(self.config.cameras),
            "image_size": [self.config.image_size, self.config.image_size],
            "action_dim": self.action_dim,
            "action_horizon": 1,
            "state_dim": self.state_dim,
        }

    def reset(self) -> None:
        """The scripted experts are memoryless functions of the observation: nothing to clear."""

    def act(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        state = observation.get("observation.state")
        if state is None:
            raise DefiError("ScriptedMetaWorldPolicy needs 'observation.state' (the 39-dim Meta-World observation)")
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise DefiError(f"observation.state has shape {list(state.shape)}: expected [{self.state_dim}] "
                            "(the full Meta-World v3 observation)")
        action = self._expert.get_action(state)
        return np.asarray(action, dtype=np.float32).reshape(1, self.action_dim)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ScriptedMetaWorldPolicy:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise CheckpointError(f"{directory}: no {CONFIG_NAME} (expected a saved {cls.__name__})")
        return cls(load_config(ScriptedMetaWorldConfig, directory / CONFIG_NAME))
