"""Trainer throughput: fp32 vs bf16 autocast on this machine, same model, same run (a ratio).

    python benchmarks/bench_trainer.py [--steps 30]

Prints samples/s for both and the bf16/fp32 ratio, plus what `mixed_precision="auto"` picks here.
"""

import argparse
import tempfile

import torch
from torch import nn
from torch.utils.data import Dataset

from defi.train.trainer import Trainer, TrainerConfig, resolve_mixed_precision
from defi.utils.environment import describe_cpu


class Tokens(Dataset):
    def __len__(self) -> int:
        return 4096

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(64, 256, generator=g)}


class SmallTransformer(nn.Module):
    """About the size of the CPU preset's action adapter: 4 layers, width 256."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0)
        self.net = nn.TransformerEncoder(layer, 4)
        self.head = nn.Linear(256, 256)

    def forward(self, batch: dict) -> dict:
        x = batch["x"]
        return {"loss": ((self.head(self.net(x)) - x) ** 2).mean()}


def measure(precision: str, steps: int) -> float:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainerConfig(max_steps=steps, batch_size=32, warmup_steps=0, log_every=steps, checkpoint_every=10**6,
                            ema_decay=0.0, mixed_precision=precision, progress=False)
        trainer = Trainer(cfg, tmp, SmallTransformer(), Tokens())
        return trainer.fit()["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    measure("no", 3)  # warm-up
    fp32 = measure("no", args.steps)
    bf16 = measure("bf16", args.steps)
    print(describe_cpu())
    print(f"trainer fp32: {fp32:.1f} samples/s")
    print(f"trainer bf16: {bf16:.1f} samples/s")
    print(f"bf16/fp32 ratio: {bf16 / fp32:.2f}x  (mixed_precision='auto' picks {resolve_mixed_precision('auto')!r} here)")


if __name__ == "__main__":
    main()
