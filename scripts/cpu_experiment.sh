#!/usr/bin/env bash
# The CPU experiment of docs/experiments.md: 3 seeds x 9 methods on the two real crops of
# ../shared/data (Vaihingen area 1, 512 x 512; two LoVeDA rural tiles, 1024 x 1024), small
# FCN, 400 iterations, then the tables with `npa-train compare`.
#
#   scripts/cpu_experiment.sh [OUT]        # default OUT=runs/cpu_experiment
#   ITERS=2 SEEDS=0 scripts/cpu_experiment.sh runs/smoke   # a quick check of the commands
#
# About 40 s per run on 2 idle cores (54 runs + 6 Fig. 6 runs: about 45 minutes).
# Finished evaluations are skipped, so the script can be restarted.
set -euo pipefail
OUT=${1:-runs/cpu_experiment}
DATA=${NPALOSS_SHARED_DATA:-../shared/data}
S=$DATA/vaihingen_crop L=$DATA/loveda_crop/Train/Rural
FIT=(--iters "${ITERS:-400}" --batch 4 --crop 128 --threads 1 --quiet)
METHODS=("ce none" "ce-weighted none" "focal none" "dice none" "npa k8_log10_L0.5"
         "npa k16_log10_L0.5" "npa k32_log10_L0.5" "npa k64_log10_L0.5"
         "npa online:k32_log10_L0.5")

# Vaihingen: train on the north half, evaluate on the south half; LoveDA: tile 0 / tile 1
python scripts/split_tile.py $S/top/top_mosaic_09cm_area1.tif \
    $S/gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif --out $OUT/vaihingen
npa-precompute run $OUT/vaihingen/gts --images $OUT/vaihingen/top \
    --out $OUT/vaihingen/store.zarr --preset isprs --k 8,16,32,64 --transform log10:L=0.5
npa-precompute run $L/masks_png --images $L/images_png --out $OUT/loveda/store.zarr \
    --preset loveda --k 8,16,32,64 --transform log10:L=0.5

for seed in ${SEEDS:-0 1 2}; do
  for data in vaihingen loveda; do
    if [ $data = vaihingen ]; then
      TR=top_mosaic_09cm_area1_north EV=top_mosaic_09cm_area1_south
    else
      TR=Train_Rural_0 EV=Train_Rural_1
    fi
    for m in "${METHODS[@]}"; do
      set -- $m
      name=$1_${2/:/-}_s$seed
      [ -f $OUT/$data/eval_$name/metrics.json ] && continue
      npa-train fit --store $OUT/$data/store.zarr --loss $1 --weights $2 --seed $seed \
          --train-tiles $TR --val-tiles $EV "${FIT[@]}" --out $OUT/$data/$name --overwrite
      npa-train evaluate --store $OUT/$data/store.zarr --checkpoint $OUT/$data/$name \
          --tiles $EV --window 256 --overlap 1/3 --threads 1 --out $OUT/$data/eval_$name -q
    done
  done
done
# Fig. 6: ce and NPALoss k = 32 with validation every 50 iterations
for seed in ${SEEDS:-0 1 2}; do
  for m in "ce none" "npa k32_log10_L0.5"; do
    set -- $m
    R=$OUT/fig6/$1_$2_s$seed
    [ -f $R/val.csv ] && [ -f $R/checkpoint.pt ] && continue
    npa-train fit --store $OUT/vaihingen/store.zarr --loss $1 --weights $2 --seed $seed \
        --train-tiles top_mosaic_09cm_area1_north --val-tiles top_mosaic_09cm_area1_south \
        --val-every 50 "${FIT[@]}" --out $R --overwrite
  done
done
for data in vaihingen loveda; do
  npa-train compare $OUT/$data/eval_* --by k --out $OUT/tables/$data
done
npa-train compare $OUT/fig6/* --out $OUT/tables/fig6
