# Sourced by examples/demo.sh after its CPT stages (bash): supervised fine-tuning of the CPT
# checkpoint into a chat model, then questions to the exported chat model.
#   chat set built offline from the corpus's manual pages (English and Chinese: "What is ls?" ->
#   the page's NAME line) -> ids + loss mask in the demo tokenizer's Llama-3 chat format
#   -> packed SFT from the CPT checkpoint (DP=2, distributed optimizer) -> Hugging Face chat
#   export (chat template, end-of-turn stop token) -> transformers answers questions of the set.
# Uses demo.sh's OUT, CLI, CKPT (the CPT checkpoint), DATA_OVERRIDES, stage and run_logged.
# shellcheck shell=bash
SFT_RECIPE=examples/demo_llama3_tiny_sft_2xcpu.yaml
SFT_PER_LANGUAGE=${DEMO_SFT_PER_LANGUAGE:-40}   # conversations per language
SFT_EPOCHS=${DEMO_SFT_EPOCHS:-70}
SFT_SEQ=256                                      # train.seq_length of the recipe
SFT_ASK=${DEMO_SFT_ASK:-4}                       # questions per language asked at the end
rm -rf "$OUT"/{chat,sft,hf_chat}

stage "SFT 1/4 bilingual chat set from the manual pages' NAME lines, in the Llama-3 chat format -> $OUT/chat"
$CLI data demo-chat "$OUT/corpus" --output "$OUT/chat/man_qa.jsonl" --per-language "$SFT_PER_LANGUAGE"
run_logged "$OUT/logs/prepare_chat.log" $CLI data prepare-chat --input "$OUT/chat/man_qa.jsonl" \
    --output-prefix "$OUT/chat/man_qa" --tokenizer "hf:$OUT/tokenizer" --seq-length "$SFT_SEQ" \
    --too-long error --no-progress
tail -n 1 "$OUT/logs/prepare_chat.log"

stage "SFT 2/4 fine-tuning the CPT model: $SFT_EPOCHS epochs of packed conversations, DP=2 -> $OUT/sft"
run_logged "$OUT/logs/train_sft.log" $CLI train "$SFT_RECIPE" "${DATA_OVERRIDES[@]}" \
    "data.chat.epochs=$SFT_EPOCHS" "checkpoint.pretrained=$CKPT" "logging.run_dir=$OUT/sft"
grep -E "^  packed:|^\[megatron-cpt\] finished" "$OUT/logs/train_sft.log" || true
SFT_CKPT="$OUT/sft/checkpoints/$(cat "$OUT/sft/checkpoints/latest")"

stage "SFT 3/4 Hugging Face chat export (chat template, stop at <|eot_id|>) -> $OUT/hf_chat"
run_logged "$OUT/logs/convert_chat.log" $CLI convert mcore-to-hf --ckpt-dir "$SFT_CKPT" \
    --out-dir "$OUT/hf_chat" --tokenizer-from "$OUT/tokenizer"
tail -n 1 "$OUT/logs/convert_chat.log"

stage "SFT 4/4 the chat model answers questions it was fine-tuned on ($OUT/logs/chat.txt)"
# The first trained (not held-out) questions of each language, with their expected answers.
mapfile -t SFT_QA < <(python3 - "$OUT/chat/man_qa.jsonl" "$OUT/sft/chat_data.json" "$SFT_ASK" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
held_out = set(json.load(open(sys.argv[2]))["sources"][0]["valid_indices"])
for language in ("en", "zh"):
    picked = [r for i, r in enumerate(rows) if r["language"] == language and i not in held_out]
    for row in picked[:int(sys.argv[3])]:
        print(row["messages"][0]["content"]); print(row["messages"][1]["content"])
PY
)
CHAT_ARGS=()
for ((i = 0; i < ${#SFT_QA[@]}; i += 2)); do CHAT_ARGS+=(--chat "${SFT_QA[i]}"); done
if ! $CLI convert generate --hf-dir "$OUT/hf_chat" --max-new-tokens 48 "${CHAT_ARGS[@]}" \
        2>"$OUT/logs/chat.log" >"$OUT/logs/chat.txt"; then
    echo "failed: convert generate --chat (log: $OUT/logs/chat.log)"; tail -n 20 "$OUT/logs/chat.log"
    exit 1
fi
EXACT=0
for ((i = 0; i < ${#SFT_QA[@]}; i += 2)); do
    line=$(grep -F -m 1 "  ${SFT_QA[i]} -> " "$OUT/logs/chat.txt")
    answer=${line#*" -> "}
    mark="  "; [[ "$answer" == "${SFT_QA[i + 1]}" ]] && { mark="ok"; EXACT=$((EXACT + 1)); }
    printf '  %s %s -> %s\n' "$mark" "${SFT_QA[i]}" "$answer"
done
echo "  $EXACT of $((${#SFT_QA[@]} / 2)) answers are exactly the page's NAME line"
