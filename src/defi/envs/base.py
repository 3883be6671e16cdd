"""What evaluation and data generation need of a simulator: `reset(seed)`, `step(action, render)`, the episode's
success, and observations in the Policy API's keys ("observation.images.<camera>" uint8 HWC, "observation.state").
One wrapper per simulator implements it (`metaworld.py`; CALVIN's protocol drives its own environment)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Env(Protocol):
    cameras: tuple[str, ...]
    max_episode_steps: int
    steps: int  # steps taken in this episode
    success: bool  # whether the episode has succeeded at any step so far

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode (the same seed gives the same scene); returns the first observation."""

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]:
        """Apply one action; (observation, reward, done, info). `render=False` leaves the images out."""

    def close(self) -> None: ...
