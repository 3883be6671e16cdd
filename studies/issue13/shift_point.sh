#!/usr/bin/env bash
# The 10-demo study point again with random-shift augmentation (4 pixels) for the two DeFI arms (issue 13, item 3),
# in its own run dir `study-shift` that reuses study1's data, GFDM, GIDM and image DP runs (symlinks): only the
# DeFI and no-pretraining runs are trained again, and the report compares all three arms on the same episodes.
# Needs a finished `study_point.sh` (study1). Rerun to resume.
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
root=${ROOT:-runs/issue13}
shift_dir=$root/${SHIFT_DIR:-study-shift}
mkdir -p "$shift_dir/runs"
for part in data gfdm gidm; do ln -sfn "../study1/$part" "$shift_dir/$part"; done
for demos in ${DEMOS:-10}; do
  for seed in ${SEEDS:-0 1 2}; do
    mkdir -p "$shift_dir/runs/demos$demos/seed$seed"
    # an image DP run study1 has not made is trained here (a link to a missing run would dangle)
    [ -d "$root/study1/runs/demos$demos/seed$seed/image_dp" ] || continue
    ln -sfn "../../../../study1/runs/demos$demos/seed$seed/image_dp" "$shift_dir/runs/demos$demos/seed$seed/image_dp"
  done
done
defi study --run-dir "$shift_dir" --demo-counts ${DEMOS:-10} --train-seeds ${SEEDS:-0 1 2} \
  --finetune.defi.random-shift ${PIXELS:-4} "$@"
