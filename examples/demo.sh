#!/usr/bin/env bash
# The product end to end on 2 CPU cores (`make demo`, a few minutes):
#   demo corpus (Chinese, English, code) -> sentencepiece tokenizer -> indexed datasets
#   -> base model: a tiny Llama trained on English + code only (ALMR 0)
#   -> continual pre-training from it with ALMR 0.33 (TP=2, 2 ranks), validation loss per source
#      and language (the Chinese losses fall, the English ones show what is forgotten)
#   -> the realized mixture checked with `data inspect-mix` -> checkpoint -> Hugging Face export
#   (weights + the tokenizer) -> a few tokens generated from it with transformers
#   -> benchmark accuracy of the base and the CPT model on a Chinese multiple-choice set
#      (examples/demo_eval.sh).
#   -> supervised fine-tuning into a chat model on questions about the manual pages, its chat
#   export, and its answers (examples/demo_sft.sh).
# The corpus reads the Debian packages fortunes-zh manpages-zh fortunes manpages: run as root
# with apt-get, the script installs missing ones; otherwise it stops and prints the command.
# Everything goes under outputs/demo/, rebuilt on each run.
#   bash examples/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=examples/demo_data.sh
source examples/demo_data.sh
OUT=outputs/demo  # the recipe's source prefixes point here
RECIPE=examples/demo_llama3_tiny_cpt_2xcpu.yaml
SOURCES=(zh_poetry zh_fortunes zh_manpages en_fortunes en_manpages code_python)
MAX_DOCS=${DEMO_MAX_DOCS:-400}       # documents per source: keeps prepare and the tokenizer quick
VOCAB=${DEMO_VOCAB:-4000}
BASE_STEPS=${DEMO_BASE_STEPS:-40}
CPT_STEPS=${DEMO_CPT_STEPS:-60}
GEN_TOKENS=${DEMO_GEN_TOKENS:-16}
PROMPTS=("床前明月光，" "The meaning of life is")
CLI=megatron-cpt
command -v "$CLI" >/dev/null || CLI=.venv/bin/megatron-cpt
export PYTHONWARNINGS=ignore

START=$SECONDS
stage() { printf '\n[demo %3ds] %s\n' $((SECONDS - START)) "$*"; }
run_logged() {  # LOG CMD...: run quietly, show the log's tail if it fails
    local log=$1; shift
    if ! "$@" >"$log" 2>&1; then
        echo "failed: $* (log: $log)"; tail -n 20 "$log"; return 1
    fi
}

rm -rf "$OUT"/{corpus,tokenizer,data,base,run,hf,logs}
mkdir -p "$OUT/logs"

stage "1/8 demo corpus (first $MAX_DOCS documents of each source) -> $OUT/corpus"
$CLI data demo-corpus "$OUT/corpus" --max-docs "$MAX_DOCS" --require-all --install-missing

stage "2/8 sentencepiece tokenizer (+ the same for transformers), vocabulary $VOCAB -> $OUT/tokenizer"
$CLI data train-tokenizer --input "$OUT/corpus" --vocab-size "$VOCAB" --output "$OUT/tokenizer"

stage "3/8 indexed datasets, one per source, two at a time -> $OUT/data"
printf '%s\n' "${SOURCES[@]}" | xargs -P 2 -I{} sh -c \
    "$CLI data prepare --input '$OUT/corpus/{}.jsonl' --output-prefix '$OUT/data/{}' \
        --tokenizer 'sp:$OUT/tokenizer/tokenizer.model' --no-progress > '$OUT/logs/prepare_{}.log' 2>&1 \
     && tail -n 1 '$OUT/logs/prepare_{}.log' || { tail -n 5 '$OUT/logs/prepare_{}.log'; exit 255; }"

# The model's vocabulary and the end-of-document id come from the prepared data.
demo_data_overrides "$OUT/data"
if [ "${DEMO_UNTIL:-}" = data ]; then  # examples/almr_study.sh trains its own base model
    stage "done in $((SECONDS - START)) s: corpus, tokenizer and data (DEMO_UNTIL=data)"
    exit 0
fi

stage "4/8 base model: $BASE_STEPS steps on English + code only (ALMR 0) -> $OUT/base"
run_logged "$OUT/logs/train_base.log" $CLI train "$RECIPE" "${DATA_OVERRIDES[@]}" \
    data.mixture.almr=0 "train.steps=$BASE_STEPS" "logging.run_dir=$OUT/base"
grep -E "^\[megatron-cpt\] (done|step $BASE_STEPS/)" "$OUT/logs/train_base.log" || true
BASE_CKPT="$OUT/base/checkpoints/$(cat "$OUT/base/checkpoints/latest")"

stage "5/8 the CPT mixture, ALMR 0.33: requested vs realized token shares over all $CPT_STEPS steps"
$CLI data inspect-mix "$RECIPE" "${DATA_OVERRIDES[@]}" "train.steps=$CPT_STEPS" --tolerance 0.01 \
    | tee "$OUT/logs/inspect_mix.log"

stage "6/8 continual pre-training from the base model: $CPT_STEPS steps, ALMR 0.33, TP=2 -> $OUT/run"
run_logged "$OUT/logs/train_cpt.log" $CLI train "$RECIPE" "${DATA_OVERRIDES[@]}" \
    "train.steps=$CPT_STEPS" "checkpoint.pretrained=$BASE_CKPT" "logging.run_dir=$OUT/run"
grep -E "^\[megatron-cpt\] done" "$OUT/logs/train_cpt.log" || true
CKPT="$OUT/run/checkpoints/$(cat "$OUT/run/checkpoints/latest")"
python3 - "$OUT/base/metrics.jsonl" "$OUT/run/metrics.jsonl" <<'EOF'
import json, sys
def last_eval(path):
    rows = [json.loads(l) for l in open(path) if '"val_loss' in l]
    return rows[-1]
base, cpt = last_eval(sys.argv[1]), last_eval(sys.argv[2])
keys = sorted(k for k in cpt if k.startswith("val_loss"))
print(f"  {'validation loss':<32} {'base model':>10} {'after CPT':>10}")
for key in keys:
    print(f"  {key:<32} {base.get(key, float('nan')):>10.3f} {cpt[key]:>10.3f}")
EOF

stage "7/8 Hugging Face export (weights, config, tokenizer) -> $OUT/hf"
run_logged "$OUT/logs/convert.log" $CLI convert mcore-to-hf --ckpt-dir "$CKPT" \
    --out-dir "$OUT/hf" --tokenizer-from "$OUT/tokenizer"
tail -n 1 "$OUT/logs/convert.log"

stage "8/8 transformers (AutoTokenizer + AutoModelForCausalLM) continues two prompts from $OUT/hf"
PROMPT_ARGS=()
for prompt in "${PROMPTS[@]}"; do PROMPT_ARGS+=(--prompt "$prompt"); done
if ! $CLI convert generate --hf-dir "$OUT/hf" --max-new-tokens "$GEN_TOKENS" "${PROMPT_ARGS[@]}" \
        2>"$OUT/logs/generate.log" | tee "$OUT/logs/generate.txt"; then
    echo "failed: convert generate (log: $OUT/logs/generate.log)"; tail -n 20 "$OUT/logs/generate.log"
    exit 1
fi

bash examples/demo_eval.sh "$OUT" "$BASE_CKPT" "$CKPT"
# shellcheck source=examples/demo_sft.sh
source examples/demo_sft.sh

stage "done in $((SECONDS - START)) s"
cat <<EOF
  corpus              $OUT/corpus (manifest.json)
  tokenizer           $OUT/tokenizer/tokenizer.model (eod id $EOD, vocabulary $VOCAB_SIZE)
  indexed data        $OUT/data/*.bin/.idx/.stats.json
  base model run      $OUT/base
  CPT run             $OUT/run (mixture.json, metrics.jsonl: loss, val_loss/<source>,
                      val_loss_by_language/<language>)
  TensorBoard         tensorboard --logdir $OUT/run/tensorboard
  checkpoint          $CKPT
  Hugging Face model  $OUT/hf (AutoTokenizer / AutoModelForCausalLM.from_pretrained)
  generated text      $OUT/logs/generate.txt
  chat set            $OUT/chat/man_qa.jsonl (+ .bin/.idx, .mask.bin/.idx, .stats.json)
  SFT run             $OUT/sft (chat_data.json: packing, held-out conversations)
  chat model          $OUT/hf_chat (apply_chat_template; answers in $OUT/logs/chat.txt)
  logs                $OUT/logs
EOF
