#!/usr/bin/env bash
# Issue 13, GIDM data regime: the candidate tasks with temporally correlated action noise (AR(1), std 0.3,
# step correlation 0.95), so the arm's motion over 0.4 s is not determined by the first frame and the task.
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
EVAL=reach,push,button-press-topdown,coffee-button,handle-pull-side,dial-turn,coffee-push,hand-insert,lever-pull,peg-unplug-side,disassemble,door-lock
defi data metaworld --tasks $EVAL --episodes-per-task 50 --cameras workspace_close --image-size 64 --seed 0 \
  --action-noise 0.3 --action-noise-correlation 0.95 --action-free --out ${ROOT:-runs/issue13}/data/corpus-ar \
  --workers 1 --no-progress
