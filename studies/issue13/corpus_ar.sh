#!/usr/bin/env bash
# Issue 13, GIDM data regime: tasks with temporally correlated action noise (AR(1), std 0.3, step correlation
# 0.95), so the arm's motion over 0.4 s is not determined by the first frame and the task. Noisy episodes run
# ~5x longer than expert ones (the expert rarely finishes early): 12 x 50 took hours on 2 shared cores, so
# TASKS / EPISODES / OUT choose a smaller corpus (2026-12-04: the six study tasks x 15, out corpus-ar6).
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
CANDIDATES=reach,push,button-press-topdown,coffee-button,handle-pull-side,dial-turn,coffee-push,hand-insert,lever-pull,peg-unplug-side,disassemble,door-lock
defi data metaworld --tasks ${TASKS:-$CANDIDATES} --episodes-per-task ${EPISODES:-50} --cameras workspace_close \
  --image-size 64 --seed 0 --action-noise 0.3 --action-noise-correlation 0.95 --action-free \
  --out ${ROOT:-runs/issue13}/data/${OUT:-corpus-ar} --workers 1 --no-progress
