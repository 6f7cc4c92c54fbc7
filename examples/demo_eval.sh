#!/usr/bin/env bash
# The demo's benchmark stage, called by examples/demo.sh after continual pre-training (runnable
# alone once the demo has run):
#   bash examples/demo_eval.sh [OUT [BASE_CKPT CPT_CKPT]]      # default OUT=outputs/demo
# Builds a Chinese multiple-choice set offline from held-out demo text (which continuation of a
# span is the real one, against copies with other Chinese characters), scores the base and the
# CPT checkpoint on it with `megatron-cpt eval` (on the checkpoints as they are, one CPU rank),
# and checks that the CPT model beats the base model and chance beyond the 95% intervals.
# Writes OUT/eval/zh_mc.jsonl and OUT/eval/results.json.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
latest() { echo "$1/checkpoints/$(cat "$1/checkpoints/latest")"; }
BASE_CKPT=${2:-$(latest "$OUT/base")}
CPT_CKPT=${3:-$(latest "$OUT/run")}
CLI=megatron-cpt
command -v "$CLI" >/dev/null || CLI=.venv/bin/megatron-cpt
PYTHON="$(dirname "$(command -v "$CLI")")/python"
TOKENIZER="sp:$OUT/tokenizer/tokenizer.model"

printf '\n[demo eval] a Chinese multiple-choice set from held-out demo text -> %s/eval\n' "$OUT"
"$PYTHON" -m megatron_cpt.eval.demo_set --corpus "$OUT/corpus" --tokenizer "$TOKENIZER" \
    --out "$OUT/eval/zh_mc.jsonl"
head -n 1 "$OUT/eval/zh_mc.jsonl"

printf '\n[demo eval] accuracy of the base and the CPT model (megatron-cpt eval, no conversion)\n'
$CLI eval --ckpt-dir "$BASE_CKPT" --ckpt-dir "$CPT_CKPT" --tokenizer "$TOKENIZER" \
    --task "zh_mc=jsonl:$OUT/eval/zh_mc.jsonl" --scoring text --language zh \
    --micro-batch-size 32 --cpu --no-progress --out "$OUT/eval/results.json" \
    2>"$OUT/logs/eval.log" || { tail -n 20 "$OUT/logs/eval.log"; exit 1; }

python3 - "$OUT/eval/results.json" <<'EOF'
import json, sys
base, cpt = (c["results"][0] for c in json.load(open(sys.argv[1]))["checkpoints"])
b, c = base["overall"], cpt["overall"]
beyond = c["low"] > b["high"] and c["low"] > cpt["chance"]
print(f"  CPT {c['accuracy']:.3f} [{c['low']:.3f}, {c['high']:.3f}] vs base {b['accuracy']:.3f} "
      f"[{b['low']:.3f}, {b['high']:.3f}] and chance {cpt['chance']:.2f}: "
      + ("better beyond the 95% intervals" if beyond else "NOT better beyond the 95% intervals"))
sys.exit(0 if beyond else 1)
EOF
