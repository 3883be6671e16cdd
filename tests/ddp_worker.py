"""Worker for the 2-process test: `torchrun --nproc_per_node 2 ddp_worker.py OUT_DIR`."""

import json
import sys
from pathlib import Path

import torch

from defi.train.trainer import Trainer, TrainerConfig
from toy import ToyDataset, ToyModel

out = Path(sys.argv[1])
torch.manual_seed(0)
model = ToyModel()
cfg = TrainerConfig(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=1, checkpoint_every=3, log_every=2,
                    ema_decay=0.0, mixed_precision="no", progress=False)
trainer = Trainer(cfg, out / "run", model, ToyDataset())
trainer.fit()
acc = trainer.accelerator
weights = [round(float(v), 8) for p in trainer.unwrapped_model.parameters() for v in p.detach().flatten()]
(out / f"rank{acc.process_index}.json").write_text(json.dumps({
    "rank": acc.process_index, "world_size": acc.num_processes, "weights": weights,
    "seen": trainer.unwrapped_model.seen}))
