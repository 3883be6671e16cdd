#!/usr/bin/env bash
# A study point with another finetuning recipe for the two DeFI arms (issue 13, item 3), in its own run dir
# $ROOT/$NAME that reuses study1's data, GFDM, GIDM and image DP runs (symlinks): only the DeFI and
# no-pretraining runs train again, and the report compares all three arms on the same episodes. The recipe is
# given as `defi study` options, e.g.
#   NAME=study-shift studies/issue13/recipe_point.sh --finetune.defi.random-shift 4
#   NAME=study-all SEEDS=0 studies/issue13/recipe_point.sh --finetune.defi.trainable all
# With IMAGE_DP=train the image DP is not linked but trained here with the same recipe (needed when the recipe
# changes the shared trainer settings, e.g. --finetune.trainer.max-steps, so that all arms get the same budget).
# With GIDM=DIR the DeFI arms couple that pretrained GIDM run dir (a `gidm_variant.py` run: model/, metrics.json,
# latent_actions.json) instead of study1's; pass the options it was trained with too (e.g. --idm.pair-shift 4
# --idm.no-cache-features) so that the study's config says which GIDM it used. GFDM=DIR does the same for the GFDM
# (a `gfdm_probe.sh` run dir; e.g. with --fdm.model.noise.zero-terminal-snr).
# Needs a finished `study_point.sh` (study1). Rerun to resume (with the same options).
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
root=${ROOT:-runs/issue13}
dir=$root/${NAME:?set NAME, the run dir of this recipe under ROOT}
mkdir -p "$dir/runs"
for part in data gfdm gidm; do ln -sfn "../study1/$part" "$dir/$part"; done
[ -z "${GIDM:-}" ] || ln -sfn "$(realpath "$GIDM")" "$dir/gidm"
[ -z "${GFDM:-}" ] || ln -sfn "$(realpath "$GFDM")" "$dir/gfdm"
for demos in ${DEMOS:-10}; do
  for seed in ${SEEDS:-0 1 2}; do
    mkdir -p "$dir/runs/demos$demos/seed$seed"
    [ "${IMAGE_DP:-link}" = link ] || continue
    # an image DP run study1 has not made is trained here (a link to a missing run would dangle)
    [ -d "$root/study1/runs/demos$demos/seed$seed/image_dp" ] || continue
    ln -sfn "../../../../study1/runs/demos$demos/seed$seed/image_dp" "$dir/runs/demos$demos/seed$seed/image_dp"
  done
done
defi study --run-dir "$dir" --demo-counts ${DEMOS:-10} --train-seeds ${SEEDS:-0 1 2} "$@"
