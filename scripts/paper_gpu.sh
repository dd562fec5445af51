#!/usr/bin/env bash
# The paper-scale runs of Feng et al. 2020 on the full ISPRS Vaihingen data, one GPU.
#
#   scripts/paper_gpu.sh --data DIR --pretrained FILE [options] [STAGE ...]
#
# Stages (default: all, in this order):
#   stores   precompute the weight stores (full ground truth for training, eroded for scoring)
#   table1   FCN (output stride 32, --model fcn): CE, NPALoss, class-weighted CE, focal, dice
#   table2   FCN, NPALoss with k = 32 and the weight transformations Norm L=0, Norm L=0.5,
#            Ln L=0.5, Log10 L=0.5
#   fig5     FCN, NPALoss, log10 L=0.5, search region k = 8, 16, 32, 64
#   table3   FCN-dilated, PSPNet, DeepLabV3 (output stride 8, auxiliary loss 0.4): CE and
#            NPALoss
#   compare  the tables (npa-train compare: medians over seeds), Fig. 5 (--by k), Fig. 6
# Every run validates every --val-every iterations (val.csv, best.pt): Fig. 6 (mF1 along
# training) is drawn from the table1 runs fcn_ce_* and fcn_npa_k32_log10_L0.5_* by the
# `compare` stage, with the tables (median over the seeds).
#
# Options:
#   --data DIR         Vaihingen release: top/, gts_for_participants/,
#                      gts_eroded_for_participants/ (required for every stage)
#   --pretrained FILE  ImageNet ResNet weights, a local file (torchvision's
#                      resnet101-63fe2227.pth; resnet50-0676ba61.pth with --r50)
#   --out DIR          stores, runs/ and eval/ go here (default: paper_runs)
#   --iters N          training iterations (default 5000, the paper's)
#   --val-every N      validation during training every N iterations (default 500)
#   --seeds "S ..."    seeds; the paper reports the median of 3 runs (default "0 1 2")
#   --r50              the ResNet-50 variants (fcn_r50, ...) for smaller GPUs
#   --device DEV       default cuda
#   --dry-run          print the commands instead of running them
# Extra `npa-train fit` options can be given in the FIT_ARGS environment variable.
#
# Runs are named MODEL_LOSS[_WEIGHTS]_sSEED; a run folder that holds a checkpoint is
# continued with --resume (a finished one is left as it is) and an evaluation that wrote
# metrics.md is skipped, so the script can be restarted after an interruption.
set -euo pipefail

DATA="" PRETRAINED="" OUT="paper_runs" ITERS=5000 SEEDS="0 1 2" SUFFIX="" DEVICE=cuda DRY=0
VAL_EVERY=500
STAGES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --pretrained) PRETRAINED="$2"; shift 2 ;;
        --val-every) VAL_EVERY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --r50) SUFFIX="_r50"; shift ;;
        --device) DEVICE="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        stores|table1|table2|fig5|table3) STAGES+=("$1"); shift ;;
        *) echo "paper_gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#STAGES[@]} -gt 0 ] || STAGES=(stores table1 table2 fig5 table3 compare)
[ -n "$DATA" ] || { echo "paper_gpu.sh: --data DIR is required" >&2; exit 2; }
if [ -z "$PRETRAINED" ] && [[ " ${STAGES[*]} " != " stores " ]]; then
    echo "paper_gpu.sh: --pretrained FILE (ImageNet ResNet weights) is required" >&2; exit 2
fi

STORE="$OUT/vaihingen.zarr"                # full ground truth: training
SCORE="$OUT/vaihingen_eroded.zarr"         # eroded ground truth: scoring, as the benchmark
VAL=top_mosaic_09cm_area11,top_mosaic_09cm_area15,top_mosaic_09cm_area28,top_mosaic_09cm_area30,top_mosaic_09cm_area34

run() {  # print, then run unless --dry-run
    echo "+ $*"
    [ "$DRY" = 1 ] || "$@"
}

stores() {
    run npa-precompute run "$DATA/gts_for_participants" --images "$DATA/top" --out "$STORE" \
        --preset isprs --k 8,16,32,64 --transform log10:L=0.5 --transform ln:L=0.5 \
        --transform norm:L=0 --transform norm:L=0.5 --workers 2
    run npa-precompute run "$DATA/gts_eroded_for_participants" --images "$DATA/top" \
        --out "$SCORE" --preset isprs --k 32 --transform log10:L=0.5 --workers 2
}

# train_eval MODEL LOSS WEIGHTS(none for the other losses): every seed, then score it
train_eval() {
    local model="$1$SUFFIX" loss="$2" weights="$3" seed name resume
    for seed in $SEEDS; do
        name="${model}_${loss}$([ "$weights" = none ] || echo "_$weights")_s$seed"
        resume=()
        [ -f "$OUT/runs/$name/checkpoint.pt" ] && resume=(--resume)
        # shellcheck disable=SC2086  # FIT_ARGS: options split on purpose
        run npa-train fit --store "$STORE" --split vaihingen-paper --loss "$loss" \
            --weights "$weights" --model "$model" --pretrained "$PRETRAINED" \
            --iters "$ITERS" --batch 6 --crop 513 --lr 0.01 --device "$DEVICE" \
            --seed "$seed" --val-every "$VAL_EVERY" --out "$OUT/runs/$name" --quiet \
            ${FIT_ARGS:-} "${resume[@]}"
        [ -f "$OUT/eval/$name/metrics.md" ] && continue
        run npa-train evaluate --store "$SCORE" --full-gt "$STORE" \
            --checkpoint "$OUT/runs/$name" --tiles "$VAL" --window 513 --overlap 1/3 \
            --device "$DEVICE" --out "$OUT/eval/$name"
    done
}

table1() {  # Table 1: the losses on the paper's FCN (no auxiliary head)
    for run_ in "ce none" "npa k32_log10_L0.5" "ce-weighted none" "focal none" "dice none"; do
        set -- $run_
        train_eval fcn "$1" "$2"
    done
}

table2() {  # Table 2: weight transformations, FCN (k32_log10_L0.5 is shared with Table 1)
    for w in k32_norm_L0 k32_norm_L0.5 k32_ln_L0.5 k32_log10_L0.5; do
        train_eval fcn npa "$w"
    done
}

fig5() {  # Fig. 5: search region k, FCN
    for k in 8 16 32 64; do
        train_eval fcn npa "k${k}_log10_L0.5"
    done
}

table3() {  # Table 3: the dilated networks with deep supervision (--aux-weight 0.4 default)
    for model in fcn_dilated pspnet deeplabv3; do
        train_eval "$model" ce none
        train_eval "$model" npa k32_log10_L0.5
    done
}

compare() {  # the tables: medians over the seeds (compare.md/.csv), Fig. 5 and Fig. 6
    local m="fcn$SUFFIX"
    run npa-train compare "$OUT"/eval/"${m}"_{ce,npa_k32_log10_L0.5,ce-weighted,focal,dice}_s* \
        "$OUT"/runs/"${m}"_{ce,npa_k32_log10_L0.5}_s* --out "$OUT/tables/table1"
    run npa-train compare "$OUT"/eval/"${m}"_npa_k32_*_s* --by transform --out "$OUT/tables/table2"
    run npa-train compare "$OUT"/eval/"${m}"_npa_k*_log10_L0.5_s* "$OUT"/eval/"${m}"_ce_s* \
        --by k --out "$OUT/tables/fig5"
    run npa-train compare "$OUT"/eval/{fcn_dilated,pspnet,deeplabv3}"$SUFFIX"_*_s* \
        --out "$OUT/tables/table3"
}

for stage in "${STAGES[@]}"; do
    echo "== $stage"
    "$stage"
done
echo "tables: $OUT/tables/*/compare.md (medians over the seeds, as the paper)"
