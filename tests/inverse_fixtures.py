"""A tiny in-memory clip dataset of the data layer's contract: a square moves by the (constant) action."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class MovingSquareClips(Dataset):
    """Clips of `episodes` episodes x `clips_per_episode`; o_{t+n} = o_t with the square moved by n * action."""

    def __init__(self, episodes: int = 8, clips_per_episode: int = 8, size: int = 32, views: int = 2,
                 horizon: int = 4, n: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.size, self.views, self.horizon = size, views, horizon
        self.items = []
        for ep in range(episodes):
            color = torch.randint(80, 255, (3,), generator=g, dtype=torch.uint8)
            for k in range(clips_per_episode):
                pos = torch.randint(4, size - 12, (2,), generator=g)
                vel = torch.randint(-1, 2, (2,), generator=g)
                self.items.append((ep, k, color, pos, vel * n, vel))

    def __len__(self) -> int:
        return len(self.items)

    def _frame(self, color, pos) -> torch.Tensor:
        img = torch.full((3, self.size, self.size), 20, dtype=torch.uint8)
        y, x = int(pos[0]), int(pos[1])
        img[:, y : y + 6, x : x + 6] = color[:, None, None]
        return img

    def __getitem__(self, i: int) -> dict:
        ep, k, color, pos, shift, vel = self.items[i]
        cur, goal = self._frame(color, pos), self._frame(color, (pos + shift).clamp(0, self.size - 6))
        actions = torch.zeros(self.horizon, 4)
        actions[:, :2] = vel.float()
        return {
            "images": torch.stack([cur] * self.views), "goal_images": torch.stack([goal] * self.views),
            "future_images": torch.stack([goal[None]] * self.views),
            "future_mask": torch.ones(1, dtype=torch.bool),
            "actions": actions, "action_mask": torch.ones(self.horizon, dtype=torch.bool),
            "state": torch.zeros(4), "has_actions": torch.tensor(True),
            "instruction": ["push the square", "move the block"][ep % 2], "source": "synthetic",
            "episode_index": torch.tensor(ep), "frame_index": torch.tensor(k),
        }
