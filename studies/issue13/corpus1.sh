#!/usr/bin/env bash
# Action-free corpus for the pretraining study (issue 13): the candidate evaluation tasks, 100 episodes each
# (>= 10x the labeled frames at 10 demonstrations per task), plus 25 other tasks x 10 episodes; workspace_close 64x64.
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
D=defi
EVAL=reach,push,button-press-topdown,coffee-button,handle-pull-side,dial-turn,coffee-push,hand-insert,lever-pull,peg-unplug-side,disassemble,door-lock
OTHER=MT10,button-press,door-close,drawer-open,faucet-open,faucet-close,handle-press,plate-slide,window-close,reach-wall,basketball,sweep-into,door-unlock,handle-pull,coffee-pull,shelf-place,push-back,pick-out-of-hole
$D data metaworld --tasks $EVAL --episodes-per-task 100 --cameras workspace_close --image-size 64 --seed 0 --action-free --out ${ROOT:-runs/issue13}/data/corpus-eval --workers 1 --no-progress
$D data metaworld --tasks $OTHER --episodes-per-task 10 --cameras workspace_close --image-size 64 --seed 0 --action-free --out ${ROOT:-runs/issue13}/data/corpus-other --workers 1 --no-progress
