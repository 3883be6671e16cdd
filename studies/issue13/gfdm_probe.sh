#!/usr/bin/env bash
# Quick GFDM capacity probe (issue 13): 400 steps each, held-out one-step / copy ratio at the end.
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
R=${ROOT:-runs/issue13}/study1  # study1/data/{corpus,corpus-other} = corpus-eval, corpus-other from corpus1.sh
NAME=$1; shift
defi pretrain-fdm --preset small --data.sources $R/data/corpus 3.0 $R/data/corpus-other 1.0 \
  --data.cameras workspace_close --data.val-fraction 0.05 --data.seed 0 \
  --trainer.checkpoint-every 1000 --trainer.eval-every 0 --trainer.no-progress --eval.clips 64 \
  --run-dir ${ROOT:-runs/issue13}/runs/gfdm-$NAME "$@"
