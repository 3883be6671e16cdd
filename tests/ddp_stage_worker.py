"""Worker for the 2-process stage test: `torchrun --nproc_per_node 2 ddp_stage_worker.py STORE OUT_DIR`.

Runs the tiny pretrain-idm stage end to end on a Meta-World store; each rank also writes the weights it holds when
the stage saves its model, so the test can compare the saved model with every rank's."""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from defi.config import replace
from defi.train import pretrain_idm, stage

store, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ.get("RANK", "0"))
original_save = stage.StageRunner.save


def save_and_record(self, model):
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    return original_save(self, model)


stage.StageRunner.save = save_and_record
torch.manual_seed(0)
cfg = pretrain_idm.PretrainIDMConfig.preset("tiny")
cfg = replace(cfg, run_dir=out / "run",
              data=replace(cfg.data, sources=[(str(store), 1.0)], cameras=("corner",), val_fraction=0.25),
              trainer=replace(cfg.trainer, max_steps=6, batch_size=4, checkpoint_every=3, log_every=2))
pretrain_idm.run(cfg)
