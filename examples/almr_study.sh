#!/usr/bin/env bash
# The ALMR study at CPU scale, one command (`make almr-study`, about 20-30 minutes on 2 cores):
#   examples/demo.sh builds the demo corpus, tokenizer, indexed data and a base model trained on
#   English + code only (here with ALMR_BASE_STEPS steps);
#   -> `megatron-cpt almr sweep`: continual pre-training from that base over ALMR x learning rate,
#      every run on the same token budget, plus the pre-CPT reference evaluation;
#   -> `megatron-cpt almr fit` with both objectives: best ALMR per learning rate, the fitted
#      relation, JSON and PNGs (docs/ALMR.md shows and explains them).
# Everything goes under outputs/demo/ (demo.sh) and outputs/almr_study/, rebuilt on each run.
#   bash examples/almr_study.sh
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=examples/demo_data.sh
source examples/demo_data.sh
OUT=outputs/almr_study
RECIPE=examples/demo_llama3_tiny_cpt_2xcpu.yaml
ALMRS=${ALMR_GRID:-0.1,0.3,0.5,0.7,0.9}
LRS=${ALMR_LR_GRID:-1e-3,3e-3,1e-2}
STEPS=${ALMR_STEPS:-100}                 # per run, each of the recipe's batch (the sweep prints it)
BASE_STEPS=${ALMR_BASE_STEPS:-200}
TARGET_LR=${ALMR_TARGET_LR:-2e-3}        # the learning rate of the run to recommend an ALMR for
CLI=megatron-cpt
command -v "$CLI" >/dev/null || CLI=.venv/bin/megatron-cpt
export PYTHONWARNINGS=ignore

START=$SECONDS
stage() { printf '\n[almr study %4ds] %s\n' $((SECONDS - START)) "$*"; }
rm -rf "$OUT"
mkdir -p "$OUT"

stage "1/4 demo corpus, tokenizer, data and a base model of $BASE_STEPS steps (examples/demo.sh)"
DEMO_BASE_STEPS=$BASE_STEPS bash examples/demo.sh > "$OUT/demo.log" 2>&1 \
    || { tail -n 30 "$OUT/demo.log"; echo "examples/demo.sh failed (log: $OUT/demo.log)"; exit 1; }
grep -E "^\[demo" "$OUT/demo.log"
BASE_CKPT="outputs/demo/base/checkpoints/$(cat outputs/demo/base/checkpoints/latest)"
demo_data_overrides outputs/demo/data  # the vocabulary and end-of-document id demo.sh trained with

stage "2/4 sweep: ALMR $ALMRS x LR $LRS, $STEPS steps each, from $BASE_CKPT -> $OUT/sweep"
# Every run trains train.steps of the recipe's batch: the same token budget (printed by the sweep).
$CLI almr sweep "$RECIPE" "${DATA_OVERRIDES[@]}" "checkpoint.pretrained=$BASE_CKPT" \
    "train.steps=$STEPS" "train.eval_interval=$STEPS" train.eval_steps=8 \
    logging.tensorboard=false "data.cache_dir=$OUT/data_cache" \
    --almr "$ALMRS" --lr "$LRS" --out "$OUT/sweep" --no-progress
$CLI almr status "$OUT/sweep"

stage "3/4 fit, constrained: lowest zh loss with en and code no worse than the base model"
$CLI almr fit "$OUT/sweep" --objective constrained --tolerance 0 --target-lr "$TARGET_LR" \
    --out "$OUT/fit_constrained"

stage "4/4 fit, weighted: 0.5 x zh loss + 0.5 x mean(en, code) loss"
$CLI almr fit "$OUT/sweep" --objective weighted --weight 0.5 --target-lr "$TARGET_LR" \
    --out "$OUT/fit_weighted"

stage "done in $((SECONDS - START)) s: $OUT/fit_constrained, $OUT/fit_weighted"
