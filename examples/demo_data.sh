# Sourced by examples/demo.sh and examples/almr_study.sh (bash).
# demo_data_overrides DATA_DIR: sets EOD and VOCAB_SIZE from the prepared demo data's stats (the
# tokenizer's end-of-document id and vocabulary), and DATA_OVERRIDES to the recipe overrides that
# give the model and the data those values.
# shellcheck shell=bash disable=SC2034  # the variables are the callers'
demo_data_overrides() {
    read -r EOD VOCAB_SIZE < <(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(s['eod_id'], s['vocab_size'])" "$1/zh_poetry.stats.json")
    DATA_OVERRIDES=("model.vocab_size=$VOCAB_SIZE" "data.eod_token_id=$EOD")
}
