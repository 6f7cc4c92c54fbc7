"""Requests become sequences and scored positions as lm-evaluation-harness forms them; accuracy
and its interval follow from the log-likelihoods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval_fixtures import write_ceval
from megatron_cpt.config.eval import EvalTaskConfig
from megatron_cpt.data.tokenizers import Tokenizer, load_tokenizer
from megatron_cpt.errors import UserError
from megatron_cpt.eval.requests import encode_pair, plan_scoring
from megatron_cpt.eval.results import accuracy_of, task_result
from megatron_cpt.eval.tasks import load_task

# One token per character (its code point), plus the merge "ab" -> 1, and BOS 2.


def _encode(text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        if text.startswith("ab", i):
            ids.append(1)
            i += 2
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


TOKENIZER = Tokenizer("chars", 70000, 0, _encode, bos_id=2)


def test_pairs_split_as_the_harness_does():
    # Trailing whitespace of the context moves to the continuation.
    assert encode_pair(TOKENIZER, "Q: x ", "A", False) == (_encode("Q: x"), _encode(" A"))
    # The continuation is what encoding both adds after the context's own encoding, even when a
    # token spans the boundary ("a" + "b" -> one token): the model then reads context + that.
    assert encode_pair(TOKENIZER, "xa", "bc", False) == ([ord("x"), ord("a")], [ord("c")])
    assert encode_pair(TOKENIZER, "x", "y", True) == ([2, ord("x")], [ord("y")])


def test_choices_after_the_same_context_share_a_sequence_and_long_ones_lose_their_start():
    pairs = [("ctx:", "A"), ("ctx:", "B"), ("ctx:", "Bee"), ("0123456789", "xy")]
    plan = plan_scoring(pairs, TOKENIZER, False, max_length=8, vocab_size=70000)
    # The one-token letters read the same inputs: one sequence for both.
    assert plan.sequences[0] == tuple(_encode("ctx:"))
    assert plan.entries[plan.request_entries[0][0]].tolist() == [0, 3, ord("A")]
    assert plan.entries[plan.request_entries[1][0]].tolist() == [0, 3, ord("B")]
    assert plan.sequences[1] == tuple(_encode("ctx:Be"))
    assert plan.entries[slice(*plan.request_entries[2])].tolist() == [
        [1, 3, ord("B")], [1, 4, ord("e")], [1, 5, ord("e")]]
    # (context + continuation)[-(8 + 1):][:-1]: the first three digits are cut.
    assert plan.sequences[2] == tuple(_encode("3456789x"))
    assert plan.entries[slice(*plan.request_entries[3])].tolist() == [[2, 6, ord("x")], [2, 7, ord("y")]]
    assert plan.truncated == 1 and plan.requests == 4 and len(plan.sequences) == 3
    assert plan.request_logprobs(np.arange(len(plan.entries), dtype=float)).tolist() == [
        0.0, 1.0, 2 + 3 + 4, 5 + 6]


def test_plan_refusals_name_the_problem():
    with pytest.raises(UserError, match="more than the model's vocabulary"):
        plan_scoring([("a", "b")], TOKENIZER, False, 8, vocab_size=1000)
    with pytest.raises(UserError, match="more than max_length 2"):
        plan_scoring([("a", "xyz")], TOKENIZER, False, 2, 70000)
    no_bos = Tokenizer("chars", 70000, 0, _encode)
    with pytest.raises(UserError, match="no beginning-of-text id"):
        plan_scoring([("a", "b")], no_bos, True, 8, 70000)


def test_accuracy_is_the_share_of_items_whose_best_choice_is_the_answer(tmp_path):
    root = write_ceval(tmp_path / "ceval")
    letter = load_task(EvalTaskConfig(format="ceval", path=str(root)))
    # Answers are A B C D, B A D C; make the model pick A everywhere but at item 2 (C).
    logprobs = np.full((8, 4), -5.0)
    logprobs[:, 0] = -1.0
    logprobs[2] = [-3.0, -3.0, -0.5, -3.0]
    logprobs[5] = [-2.0, -2.0, -9.0, -9.0]  # a tie: the first choice wins
    result = task_result(letter, logprobs.ravel())
    assert [item.chosen for item in result.items] == [0, 0, 2, 0, 0, 0, 0, 0]
    assert result.correct == [1, 0, 1, 0, 0, 1, 0, 0]
    assert (result.overall.correct, result.overall.items) == (3, 8)
    assert result.subjects["chinese_history"].accuracy == 0.5
    assert result.subjects["high_school_geography"].accuracy == 0.25
    assert result.macro == pytest.approx(0.375) and result.chance == 0.25

    # Text scoring divides by the choice's length in characters: the answer 珠穆朗玛峰 (5 characters,
    # -1.0 per character) beats 泰山 (2 characters), whose sum is higher (-2.5, -1.25 each).
    text = load_task(EvalTaskConfig(format="ceval", path=str(root), scoring="text",
                                    subjects=["high_school_geography"], items_per_subject=2))
    assert [len(c) for c in text.items[1].choices] == [5, 4, 2, 2]
    sums = np.array([[-3.0, -2.0, -9.0, -9.0], [-5.0, -4.2, -2.5, -9.0]])
    assert [i.chosen for i in task_result(text, sums.ravel()).items] == [1, 0]
    assert task_result(text, sums.ravel()).correct == [1, 1]


def test_wilson_interval():
    # Wilson score interval, 95%: 8 of 10 -> [0.4902, 0.9433]; 0 of 10 -> [0, 0.2775].
    eight = accuracy_of(8, 10)
    assert (eight.accuracy, round(eight.low, 4), round(eight.high, 4)) == (0.8, 0.4902, 0.9433)
    none = accuracy_of(0, 10)
    assert (none.low, round(none.high, 4)) == (0.0, 0.2775)


def test_the_demo_set_asks_for_held_out_text_among_copies_of_equal_token_count(tmp_path):
    from tokenizers import Regex, Tokenizer as HfTokenizer, models, pre_tokenizers

    from data_fixtures import write_jsonl
    from megatron_cpt.eval.demo_set import build_demo_set

    lines = ["床前明月光疑是地上霜举头望明月低头思故乡", "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少",
             "白日依山尽黄河入海流欲穷千里目更上一层楼", "红豆生南国春来发几枝愿君多采撷此物最相思"]
    held_out = ["千山鸟飞绝万径人踪灭孤舟蓑笠翁独钓寒江雪", "松下问童子言师采药去只在此山中云深不知处"]
    documents = [lines[i % 4] + lines[(i + 1) % 4] for i in range(18)] + held_out
    write_jsonl(tmp_path / "corpus" / "zh_poems.jsonl", documents)
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps(
        {"sources": [{"name": "zh_poems", "file": "zh_poems.jsonl", "lang": "zh"}]}))
    # One token per character, so that every replacement keeps the token count.
    characters = sorted({c for text in documents for c in text} | {"。"})
    tok = HfTokenizer(models.WordLevel({c: i for i, c in enumerate(["<eos>", *characters])},
                                       unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    spec = f"hf:{tmp_path / 'tok'}"
    items = build_demo_set(tmp_path / "corpus", spec, items=10, prefix=8, continuation=6)
    tokenizer = load_tokenizer(spec)
    assert items and all(item["subject"] == "zh_poems" for item in items)
    for item in items:
        real = item["choices"][item["answer"]]
        assert any(item["question"] + real in text for text in held_out)
        assert len(set(item["choices"])) == 4
        counts = {len(encode_pair(tokenizer, item["question"], c, False)[1]) for c in item["choices"]}
        assert len(counts) == 1
