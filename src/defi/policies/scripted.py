"""Meta-World v3 scripted expert as a policy: a real closed-loop policy for the server's tests and examples, and a
ceiling for evaluation. It reads the full 39-dim Meta-World observation from `observation.state`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from defi.config import load_config, save_config
from defi.errors import CheckpointError, ShapeError
from defi.policies.base import CONFIG_NAME, PolicyConfig, PolicyMetadata

ENV_STATE_DIM = 39


@dataclass
class ScriptedConfig(PolicyConfig):
    type_name: ClassVar[str] = "scripted"
    task: str = "reach-v3"
    # Cameras a robot loop must send (validated by the server, ignored by the expert, which reads only the state).
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    state_dim: int = ENV_STATE_DIM
    action_horizon: int = 1  # the expert replans every step

    def validate(self) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        super().validate()
        self.check(self.task in ENV_POLICY_MAP, "task", f"a Meta-World v3 task with a scripted expert, one of "
                   f"{sorted(ENV_POLICY_MAP)}")
        self.check(self.state_dim == ENV_STATE_DIM, "state_dim", f"{ENV_STATE_DIM} (the full Meta-World observation)")
        self.check(self.action_dim == 4 and self.action_horizon == 1, "action_dim", "4 with action_horizon 1")


class ScriptedPolicy:
    """`metaworld.policies.Sawyer<Task>V3Policy` behind the policy protocol (one-step chunks)."""

    config_class = ScriptedConfig

    def __init__(self, config: ScriptedConfig | None = None):
        from metaworld.policies import ENV_POLICY_MAP

        self.config = config or ScriptedConfig()
        self.config.validate()
        self._expert = ENV_POLICY_MAP[self.config.task]()
        # The experts' gains trip this warning on every step; the environment clips actions to [-1, 1] anyway.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld")

    @property
    def metadata(self) -> PolicyMetadata:
        cfg = self.config
        return PolicyMetadata("scripted", list(cfg.cameras), [cfg.image_size, cfg.image_size], cfg.state_dim,
                              cfg.action_dim, cfg.action_horizon, extra={"task": cfg.task})

    def reset(self, seed: int | None = None) -> None:
        """The scripted experts are memoryless functions of the observation: nothing to clear."""

    def fork(self) -> ScriptedPolicy:
        return copy.copy(self)

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        state = observation.get("observation.state")
        if state is None:
            raise ShapeError(f"ScriptedPolicy needs 'observation.state' (the {ENV_STATE_DIM}-dim Meta-World "
                             "observation)")
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (ENV_STATE_DIM,):
            raise ShapeError(f"observation.state: expected shape [{ENV_STATE_DIM}] (the full Meta-World v3 "
                             f"observation), got {list(state.shape)}")
        return np.asarray(self._expert.get_action(state), dtype=np.float32).reshape(1, 4)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ScriptedPolicy:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise CheckpointError(f"{directory}: no {CONFIG_NAME} (expected a saved {cls.__name__})")
        return cls(load_config(ScriptedConfig, directory / CONFIG_NAME))
