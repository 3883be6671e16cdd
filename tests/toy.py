"""A tiny regression problem used by the trainer tests (and the 2-process test's worker)."""

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """y = x @ W + noise, deterministic per index; records which indices were read."""

    def __init__(self, n: int = 64, dim: int = 4, seed: int = 0, bad_index: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.w = torch.randn(dim, 2, generator=g)
        self.y = self.x @ self.w + 0.01 * torch.randn(n, 2, generator=g)
        self.bad_index = bad_index

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        y = self.y[i].clone()
        if self.bad_index is not None and i == self.bad_index:
            y[0] = float("nan")
        return {"x": self.x[i], "y": y, "index": torch.tensor(i)}


class ToyModel(nn.Module):
    def __init__(self, dim: int = 4, crash_at_call: int | None = None, nan_at_call: int | None = None):
        super().__init__()
        self.calls = 0
        self.crash_at_call, self.nan_at_call = crash_at_call, nan_at_call
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 2))
        self.seen: list[list[int]] = []

    def forward(self, batch: dict) -> dict:
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise KeyboardInterrupt("simulated kill")
        self.seen.append(batch["index"].tolist())
        # a noise term drawn from the global RNG, so resume must restore RNG states to be bit-identical
        noise = 1e-3 * torch.randn_like(batch["y"])
        loss = ((self.net(batch["x"]) - batch["y"] - noise) ** 2).mean()
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss, "abs_err": (self.net(batch["x"]) - batch["y"]).abs().mean()}
