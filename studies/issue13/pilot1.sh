#!/usr/bin/env bash
# Pilot 1 (issue 13): which tasks can an image policy learn from 10 demos AND needs its camera for?
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
D=defi
TASKS=reach,push,button-press-topdown,coffee-button,handle-pull-side,dial-turn,coffee-push,hand-insert,lever-pull,peg-unplug-side,disassemble,door-lock
$D data metaworld --tasks $TASKS --episodes-per-task 10 --cameras workspace_close --image-size 64 --seed 1000 --out ${ROOT:-runs/issue13}/data/demos12 --workers 1 --no-progress
for STATE in 0 4; do
  $D finetune --preset small --policy-type image_dp --data.sources ${ROOT:-runs/issue13}/data/demos12 1.0 --data.val-fraction 0 \
    --image-dp.cameras workspace_close --image-dp.state-dim $STATE --val-batches 0 --trainer.max-steps 3000 \
    --trainer.batch-size 32 --trainer.checkpoint-every 1000 --trainer.eval-every 0 --trainer.no-progress \
    --run-dir ${ROOT:-runs/issue13}/runs/pilot1-dp-state$STATE --no-evaluate || true
  $D eval --policy ${ROOT:-runs/issue13}/runs/pilot1-dp-state$STATE --out-dir ${ROOT:-runs/issue13}/runs/pilot1-dp-state$STATE/eval \
    --eval.tasks reach-v3 push-v3 button-press-topdown-v3 coffee-button-v3 handle-pull-side-v3 dial-turn-v3 coffee-push-v3 hand-insert-v3 lever-pull-v3 peg-unplug-side-v3 disassemble-v3 door-lock-v3 \
    --eval.cameras workspace_close --eval.episodes-per-task 10 --eval.max-episode-steps 300 --eval.execute-steps 8 \
    --eval.batch-size 8 --eval.vision-check --eval.video-episodes 1
done
