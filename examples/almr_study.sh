#!/usr/bin/env bash
# The ALMR study at CPU scale, one command (`make almr-study`, under 30 minutes on 2 cores):
#   examples/demo.sh (DEMO_UNTIL=data) builds the demo corpus, tokenizer and indexed data;
#   -> a base model trained on English + code only (ALMR_BASE_STEPS steps);
#   -> `megatron-cpt almr sweep`: continual pre-training from that base over ALMR x learning rate
#      x seed, every run on the same token budget, plus the pre-CPT reference evaluation;
#   -> `megatron-cpt almr fit` with both objectives: best ALMR per learning rate with 95%
#      intervals over validation batches and seeds, the fitted relation, a verdict, JSON and PNGs;
#   -> outputs/almr_study/study.json, compared with the committed docs/almr/study.json, whose
#      figures docs/ALMR.md shows.
# Every run is one rank with one thread (launch.cpu_threads=1), so the figures are the same on any
# machine with the same Debian packages and libraries; two runs go at a time (--parallel 2).
# Everything goes under outputs/demo/ (corpus, tokenizer, data) and outputs/almr_study/.
#   bash examples/almr_study.sh
#   ALMR_STUDY_UPDATE=1 bash examples/almr_study.sh   # also make the fresh figures the committed ones
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=examples/demo_data.sh
source examples/demo_data.sh
OUT=outputs/almr_study
COMMITTED=docs/almr/study.json
RECIPE=examples/demo_llama3_tiny_cpt_2xcpu.yaml
ALMRS=${ALMR_GRID:-0.1,0.3,0.5,0.7,0.9}
LRS=${ALMR_LR_GRID:-1e-3,3e-3,1e-2}
SEEDS=${ALMR_SEEDS:-4}                   # runs per grid point, train.seed 1234, 1235, ...
STEPS=${ALMR_STEPS:-100}                 # per run, each of the recipe's batch (the sweep prints it)
BASE_STEPS=${ALMR_BASE_STEPS:-200}
TARGET_LR=${ALMR_TARGET_LR:-2e-3}        # the learning rate of the run to recommend an ALMR for
PARALLEL=${ALMR_PARALLEL:-2}             # runs at a time
# One process and one thread per run: the arithmetic is the same on every machine, and on CPU
# one rank of this tiny model trains faster than the recipe's two (TP=2 over gloo).
LAYOUT=(parallel.tp=1 launch.procs_per_node=1 launch.cpu_threads=1)
CLI=megatron-cpt
command -v "$CLI" >/dev/null || CLI=.venv/bin/megatron-cpt
PYTHON=$(dirname "$(command -v "$CLI")")/python
export PYTHONWARNINGS=ignore

START=$SECONDS
stage() { printf '\n[almr study %4ds] %s\n' $((SECONDS - START)) "$*"; }
rm -rf "$OUT"
mkdir -p "$OUT"

stage "1/6 demo corpus, tokenizer and data (examples/demo.sh, DEMO_UNTIL=data)"
DEMO_UNTIL=data bash examples/demo.sh > "$OUT/demo.log" 2>&1 \
    || { tail -n 30 "$OUT/demo.log"; echo "examples/demo.sh failed (log: $OUT/demo.log)"; exit 1; }
grep -E "^\[demo" "$OUT/demo.log"
demo_data_overrides outputs/demo/data  # the vocabulary and end-of-document id of the demo's data

stage "2/6 base model: $BASE_STEPS steps on English + code only (ALMR 0) -> $OUT/base"
$CLI train "$RECIPE" "${DATA_OVERRIDES[@]}" "${LAYOUT[@]}" data.mixture.almr=0 \
    "train.steps=$BASE_STEPS" logging.tensorboard=false "logging.run_dir=$OUT/base" \
    > "$OUT/base.log" 2>&1 || { tail -n 30 "$OUT/base.log"; exit 1; }
grep -E "^\[megatron-cpt\] finished" "$OUT/base.log" || true
BASE_CKPT="$OUT/base/checkpoints/$(cat "$OUT/base/checkpoints/latest")"

stage "3/6 sweep: ALMR $ALMRS x LR $LRS x $SEEDS seeds, $STEPS steps each -> $OUT/sweep"
# Every run trains train.steps of the recipe's batch: the same token budget (printed by the sweep).
# No final checkpoint: a finished run is read from its metrics, an interrupted one starts again.
$CLI almr sweep "$RECIPE" "${DATA_OVERRIDES[@]}" "${LAYOUT[@]}" "checkpoint.pretrained=$BASE_CKPT" \
    "train.steps=$STEPS" "train.eval_interval=$STEPS" train.eval_steps=8 \
    checkpoint.save_at_end=false logging.tensorboard=false \
    --almr "$ALMRS" --lr "$LRS" --seeds "$SEEDS" --parallel "$PARALLEL" --out "$OUT/sweep" \
    --no-progress
$CLI almr status "$OUT/sweep" | tail -n 1

stage "4/6 fit, constrained: lowest zh loss with en and code no worse than the base model"
$CLI almr fit "$OUT/sweep" --objective constrained --tolerance 0 --target-lr "$TARGET_LR" \
    --out "$OUT/fit_constrained"

stage "5/6 fit, weighted: 0.5 x zh loss + 0.5 x mean(en, code) loss"
$CLI almr fit "$OUT/sweep" --objective weighted --weight 0.5 --target-lr "$TARGET_LR" \
    --out "$OUT/fit_weighted"

stage "6/6 figures -> $OUT/study.json, against the committed $COMMITTED"
"$PYTHON" -m megatron_cpt.almr.study write "$OUT/study.json" --sweep "$OUT/sweep" \
    --demo outputs/demo --base "$OUT/base" \
    --fit "constrained=$OUT/fit_constrained" --fit "weighted=$OUT/fit_weighted"
if [ "${ALMR_STUDY_UPDATE:-}" = 1 ]; then
    cp "$OUT/study.json" "$COMMITTED"
    "$PYTHON" -m megatron_cpt.almr.study docs "$COMMITTED" docs/ALMR.md
    echo "wrote $COMMITTED and the tables of docs/ALMR.md (ALMR_STUDY_UPDATE=1)"
fi
stage "done in $((SECONDS - START)) s: $OUT/study.json, $OUT/fit_constrained, $OUT/fit_weighted"
if [ -f "$COMMITTED" ]; then
    "$PYTHON" -m megatron_cpt.almr.study compare "$OUT/study.json" "$COMMITTED"
else
    echo "no $COMMITTED to compare with (ALMR_STUDY_UPDATE=1 writes it)"
fi
