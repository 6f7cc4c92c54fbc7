"""Benchmark releases are read as they are laid out, and their prompts are the benchmarks' own."""

from __future__ import annotations

import json

import pytest

from eval_fixtures import ITEMS, answers, write_ceval, write_cmmlu, write_jsonl, write_mmlu
from megatron_cpt.config.eval import EvalTaskConfig
from megatron_cpt.eval.prompts import choice_lengths, choice_requests
from megatron_cpt.eval.tasks import load_task

WRITERS = {"ceval": write_ceval, "cmmlu": write_cmmlu, "mmlu": write_mmlu, "jsonl": write_jsonl}


def _task(tmp_path, fmt, **kwargs):
    return load_task(EvalTaskConfig(format=fmt, path=str(WRITERS[fmt](tmp_path / fmt)), **kwargs))


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_layout_reads_the_same_items_and_dev_examples(tmp_path, fmt):
    task = _task(tmp_path, fmt, shots=2)
    expected = [(s, q, tuple(c)) for s in sorted(ITEMS) for q, c, _ in ITEMS[s]["val"]]
    assert [(i.subject, i.question, i.choices) for i in task.items] == expected
    assert [i.answer for i in task.items] == answers()
    assert task.subjects == sorted(ITEMS)
    for subject in ITEMS:
        assert [e.question for e in task.examples[subject]] == [q for q, _, _ in ITEMS[subject]["dev"]]
    default_split = {"ceval": "val", "cmmlu": "test", "mmlu": "test", "jsonl": "test"}[fmt]
    assert task.config.split_name == default_split


def test_subjects_and_items_per_subject_select(tmp_path):
    task = _task(tmp_path, "ceval", subjects=["high_school_geography"], items_per_subject=3)
    assert [i.question for i in task.items] == [q for q, _, _ in ITEMS["high_school_geography"]["val"][:3]]


def test_letter_prompts_are_the_benchmarks_own(tmp_path):
    ceval = _task(tmp_path, "ceval", shots=1)
    context, continuation = choice_requests(ceval, ceval.items[0])[2]
    assert context == ("以下是中国关于chinese history考试的单项选择题，请选出其中的正确答案。\n\n"
                       "赤壁之战发生在哪个时期？\nA. 三国\nB. 汉初\nC. 唐末\nD. 宋初\n答案：A\n\n"
                       "秦始皇统一六国是在哪一年？\nA. 公元前221年\nB. 公元前206年\nC. 公元前230年\n"
                       "D. 公元前210年\n答案：")
    assert continuation == "C"

    cmmlu = _task(tmp_path, "cmmlu")
    context, continuation = choice_requests(cmmlu, cmmlu.items[1])[0]
    assert context == ("以下是关于chinese history的单项选择题，请直接给出正确答案的选项。\n\n"
                       "题目：唐朝的都城是哪里？\nA. 洛阳\nB. 长安\nC. 开封\nD. 南京\n答案是：")
    assert continuation == "A"

    mmlu = _task(tmp_path, "mmlu", shots=1)
    pairs = choice_requests(mmlu, mmlu.items[4])
    assert pairs[0][0] == ("The following are multiple choice questions (with answers) about high "
                           "school geography.\n\n中国的首都是哪座城市？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳\n"
                           "Answer: B\n\n中国最长的河流是哪条？\nA. 黄河\nB. 长江\nC. 珠江\nD. 淮河\nAnswer:")
    assert [c for _, c in pairs] == [" A", " B", " C", " D"]
    assert choice_lengths(mmlu, mmlu.items[4]) == [1, 1, 1, 1]


def test_text_prompts_score_the_choice_per_character(tmp_path):
    ceval = _task(tmp_path, "ceval", scoring="text")
    pairs = choice_requests(ceval, ceval.items[1])
    assert pairs == [("问题：唐朝的都城是哪里？\n答案：", choice) for choice in ("洛阳", "长安", "开封", "南京")]
    jsonl = _task(tmp_path, "jsonl", scoring="text", shots=1, language="en")
    context, continuation = choice_requests(jsonl, jsonl.items[0])[0]
    assert context == "赤壁之战发生在哪个时期？ 三国\n\n秦始皇统一六国是在哪一年？"
    assert continuation == " 公元前221年"
    assert choice_lengths(jsonl, jsonl.items[1]) == [2, 2, 2, 2]


def test_a_subject_mapping_names_the_subjects(tmp_path):
    root = write_ceval(tmp_path / "ceval")
    (root / "subject_mapping.json").write_text(json.dumps(
        {"chinese_history": ["Chinese History", "中国历史", "Humanities"]}, ensure_ascii=False))
    task = load_task(EvalTaskConfig(format="ceval", path=str(root)))
    assert choice_requests(task, task.items[0])[0][0].startswith("以下是中国关于中国历史考试的")
    english = load_task(EvalTaskConfig(format="ceval", path=str(root), language="en"))
    assert english.titles == {"chinese_history": "Chinese History",
                              "high_school_geography": "high school geography"}
