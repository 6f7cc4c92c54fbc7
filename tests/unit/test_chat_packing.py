"""Packing chat data: best-fit packs, the packed items (labels, loss mask, restarting positions,
boundaries), the epoch order, the validation window, the recipe checks, and the packing
efficiency of the demo's chat set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from chat_fixtures import MULTI_TURN, write_chat_jsonl, write_small_llama3

from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.data.chat_dataset import PackedChatDataset, resolve_chat_data
from megatron_cpt.data.packing import Packing, pack_best_fit
from megatron_cpt.data.prepare_chat import prepare_chat_dataset
from megatron_cpt.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO_SFT = REPO / "examples" / "demo_llama3_tiny_sft_2xcpu.yaml"


def test_best_fit_places_every_conversation_once_within_capacity():
    lengths = np.random.default_rng(0).integers(1, 200, 500)
    packing = pack_best_fit(lengths, 256)
    placed = np.concatenate(packing.packs)
    assert sorted(placed.tolist()) == list(range(500))
    assert max(lengths[p].sum() for p in packing.packs) <= 256
    assert packing.efficiency == lengths.sum() / (256 * len(packing.packs)) > 0.97
    again = pack_best_fit(lengths, 256)
    assert all(np.array_equal(a, b) for a, b in zip(packing.packs, again.packs))
    # Best fit, longest first: 60 + 40 fill one pack, 30 + 30 + 20 + 20 the other.
    exact = pack_best_fit(np.array([20, 30, 60, 20, 40, 30]), 100)
    assert [sorted(p.tolist()) for p in exact.packs] == [[2, 4], [0, 1, 3, 5]]
    assert exact.efficiency == 1.0


class InMemory:
    def __init__(self, items):
        self.items = items

    def get(self, index):
        return self.items[index]


def test_a_packed_item_keeps_conversations_apart():
    items = [(np.array([11, 12, 13, 14]), np.array([0, 0, 1, 1], dtype=np.uint8)),
             (np.array([21, 22, 23]), np.array([0, 1, 1], dtype=np.uint8))]
    data = PackedChatDataset(InMemory(items), Packing([np.array([0, 1])], 10, 7), 10, 0, 2, None)
    item = data[0]
    assert item["tokens"].tolist() == [11, 12, 13, 14, 21, 22, 23, 0, 0, 0]
    # The last token of a conversation predicts nothing of the next one; padding is never trained.
    assert item["labels"].tolist() == [12, 13, 14, 0, 22, 23, 0, 0, 0, 0]
    assert item["loss_mask"].tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert item["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert item["cu_seqlens"].tolist() == [0, 4, 7, 10]
    # Past the validation packs: empty sequences that weigh nothing in the mean.
    assert data[1]["loss_mask"].sum() == 0 and data[1]["cu_seqlens"].tolist() == [0, 10]


def test_each_epoch_visits_every_pack_once_in_its_own_order():
    items = [(np.arange(1, 4), np.ones(3, dtype=np.uint8))] * 12
    packing = Packing([np.array([i]) for i in range(12)], 4, 36)
    data = PackedChatDataset(InMemory(items), packing, 4, 0, 36, seed=5)
    order = [[int(data._pack_of(epoch * 12 + i)[0]) for i in range(12)] for epoch in range(3)]
    assert all(sorted(epoch) == list(range(12)) for epoch in order)
    assert order[0] != order[1] != order[2]
    same = PackedChatDataset(InMemory(items), packing, 4, 0, 36, seed=5)
    assert [int(same._pack_of(i)[0]) for i in range(36)] == sum(order, [])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    spec = write_small_llama3(root / "small.tiktoken")
    records = [{"messages": MULTI_TURN}] + [
        {"prompt": f"What is command {i}?", "response": f"Command {i} does thing {i}."}
        for i in range(40)]
    source = write_chat_jsonl(root / "chat.jsonl", records)
    prepare_chat_dataset([str(source)], str(root / "data" / "chat"), spec, seq_length=64,
                         progress=False)
    return root / "data" / "chat"


def _recipe(prefix: Path, *overrides: str):
    return load_recipe(DEMO_SFT, [f"data.chat.prefixes=[{prefix}]", "data.eod_token_id=4001",
                                  "model.vocab_size=4256", "train.seq_length=64", *overrides])


def test_the_plan_splits_packs_and_counts_epochs(prepared):
    recipe = _recipe(prepared, "data.chat.valid_share=0.1", "data.chat.epochs=3")
    plan = resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size)
    [source] = plan.sources
    assert (len(source.valid), len(source.train)) == (4, 37)
    assert not set(source.valid) & set(source.train)
    assert sum(len(p) for p in plan.train_packing.packs) == 37
    assert plan.steps == -(-3 * len(plan.train_packing.packs) // recipe.train.global_batch_size)
    described = plan.to_dict()
    assert described["sources"][0]["valid_indices"] == source.valid.tolist()
    assert described["chat_format"]["end_of_turn_id"] == 4009


@pytest.mark.parametrize("overrides, message", [
    (["train.micro_batch_size=2", "train.global_batch_size=4"],
     "train.micro_batch_size: packed conversations run one sequence per micro-batch"),
    (["model.attention_backend=local"], "model.attention_backend: 'local'"),
    (["data.paths=[x]"], "data.chat: give either data.chat, data.mixture or data.paths"),
    (["train.steps=10"], "train.steps: data.chat.epochs sets the number of steps"),
    (["data.chat.valid_share=1"], "data.chat.valid_share: must be in [0, 1)"),
])
def test_recipe_checks_name_the_field(prepared, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _recipe(prepared, *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["data.eod_token_id=2"], "data.eod_token_id: 2, but data.chat.prefixes[0]"),
    (["train.seq_length=32"], "train.seq_length: 32, but data.chat.prefixes[0]"),
    (["model.vocab_size=4100"], "model.vocab_size: 4100 is smaller than the vocabulary 4256"),
])
def test_data_checks_name_the_field(prepared, overrides, message):
    recipe = _recipe(prepared, *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size)


def test_missing_chat_data_names_the_command_that_writes_it(tmp_path):
    recipe = _recipe(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"data.chat.prefixes\[0\] .*does not exist: write it "
                                          r"with `megatron-cpt data prepare-chat"):
        resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size)


DEMO_PACKAGES = ("manpages", "manpages-zh")


@pytest.mark.skipif(not all(Path(f"/var/lib/dpkg/info/{p}.list").is_file() for p in DEMO_PACKAGES),
                    reason="the demo's manual pages (manpages, manpages-zh) are not installed")
def test_the_demo_chat_set_packs_at_least_95_percent_full(tmp_path):
    """As examples/demo.sh and demo_sft.sh build it: corpus, tokenizer, chat set, packing."""
    from megatron_cpt.cli import main

    demo_sft = (REPO / "examples" / "demo_sft.sh").read_text()
    per_language = demo_sft.split("DEMO_SFT_PER_LANGUAGE:-")[1].split("}")[0]
    assert main(["data", "demo-corpus", str(tmp_path / "corpus"), "--max-docs", "400"]) == 0
    assert main(["data", "train-tokenizer", "--input", str(tmp_path / "corpus"), "--vocab-size",
                 "4000", "--output", str(tmp_path / "tokenizer")]) == 0
    assert main(["data", "demo-chat", str(tmp_path / "corpus"), "--output",
                 str(tmp_path / "man_qa.jsonl"), "--per-language", per_language]) == 0
    recipe = load_recipe(DEMO_SFT, [f"data.chat.prefixes=[{tmp_path / 'man_qa'}]"])
    prepare_chat_dataset([str(tmp_path / "man_qa.jsonl")], str(tmp_path / "man_qa"),
                         f"hf:{tmp_path / 'tokenizer'}", seq_length=recipe.train.seq_length,
                         too_long="error", progress=False)
    plan = resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size)
    assert plan.train_packing.efficiency >= 0.95, plan.format_table()
    stats = json.loads((tmp_path / "man_qa.stats.json").read_text())
    assert stats["conversations"] == 2 * int(per_language)
