#!/usr/bin/env bash
# The study at 10 demonstrations per task, training seeds 0-2, preset small (issue 13). Data generation
# uses both cores; every later stage runs `--workers` processes of one torch thread. Rerun to resume.
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
defi study --run-dir ${ROOT:-runs/issue13}/study1 --demo-counts 10 --train-seeds 0 1 2 \
  --corpus.workers 2 --corpus-other.workers 2 --demos.workers 2 "$@"
