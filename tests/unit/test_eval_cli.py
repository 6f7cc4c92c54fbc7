"""``megatron-cpt eval`` refuses bad input before any rank starts: one line naming the file or
option, exit status 2, no results file."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from checkpoint_fixtures import write_checkpoint_stub
from conversion_fixtures import write_tiny_tokenizer
from eval_fixtures import write_ceval, write_jsonl
from megatron_cpt.cli import main
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.presets import preset_fields
from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.errors import ConfigError
from megatron_cpt.eval.cli import add_arguments, prepare, worker_argv
from token_fixtures import byte_run_overrides, write_byte_dataset


@pytest.fixture
def setup(tmp_path):
    ckpt = write_checkpoint_stub(tmp_path / "ckpt", ModelConfig(**preset_fields("llama3-tiny")))
    (tmp_path / "tok").mkdir()
    write_tiny_tokenizer(tmp_path / "tok", 1000)
    return tmp_path, ["eval", "--ckpt-dir", str(ckpt), "--tokenizer", f"hf:{tmp_path / 'tok'}",
                      "--cpu", "--out", str(tmp_path / "out" / "results.json")]


def _rewrite(path, edit):
    rows = list(csv.reader(path.open(encoding="utf-8")))
    edit(rows)
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _without_answer_column(rows):
    rows[0][rows[0].index("answer")] = "label"


def _answer_e(rows):
    rows[2][-1] = "E"


CASES = {
    "missing column": (lambda root: _rewrite(root / "val" / "chinese_history_val.csv",
                                             _without_answer_column), [],
                       "chinese_history_val.csv: no column 'answer' (expected the columns "
                       "question, A, B, C, D, answer)"),
    "answer not among the choices": (lambda root: _rewrite(
        root / "val" / "high_school_geography_val.csv", _answer_e), [],
        "high_school_geography_val.csv:3: answer 'E' is not one of A, B, C, D"),
    "empty task": (lambda root: [p.unlink() for p in (root / "val").glob("*.csv")], [],
                   "holds no *_val.csv files"),
    "too few dev items": (lambda root: None, ["--shots", "3"],
                          "subject 'chinese_history' has 2 dev item(s); shots=3 needs 3"),
    "unknown subject": (lambda root: None, ["--subjects", "chinese_history,astrology"],
                        "unknown subject 'astrology' in split val"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_ceval_input_is_one_line_and_writes_nothing(setup, capsys, case):
    tmp_path, argv = setup
    root = write_ceval(tmp_path / "ceval")
    damage, options, message = CASES[case]
    damage(root)
    assert main(argv + ["--task", f"ceval:{root}", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megatron-cpt eval: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [
    ("cevall:{root}", "unknown task 'cevall' (known: ceval, cmmlu, mmlu, jsonl)"),
    ("jsonl:{root}/empty.jsonl", "the test split holds no items"),
    ("jsonl:{root}/bad.jsonl", "bad.jsonl:1: 'answer' 4 is not among the choices (expected an "
                               "index 0 to 1)"),
    ("jsonl:{root}/missing.jsonl", "missing.jsonl): no such file or directory"),
    ("mmlu:{root}/mmlu", "law_test.csv:2: 5 column(s), expected 6 (question, A, B, C, D, "
                         "answer; no header)"),
])
def test_bad_task_specs_and_jsonl(setup, capsys, spec, message):
    tmp_path, argv = setup
    root = tmp_path / "tasks"
    root.mkdir()
    (root / "empty.jsonl").write_text("\n")
    (root / "bad.jsonl").write_text(json.dumps({"question": "q", "choices": ["a", "b"],
                                                "answer": 4}) + "\n")
    (root / "mmlu" / "test").mkdir(parents=True)
    (root / "mmlu" / "test" / "law_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,B\n")
    assert main(argv + ["--task", spec.format(root=root)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_valid_input_is_prepared_and_passed_to_the_ranks(setup):
    tmp_path, argv = setup
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv[1:] + ["--task", f"zh=jsonl:{write_jsonl(tmp_path / 'j')}",
                                         "--task", f"ceval:{write_ceval(tmp_path / 'c')}",
                                         "--shots", "1", "--tp", "2"])
    models, parallel, benchmarks = prepare(args)
    assert [t.name for t in benchmarks.tasks] == ["zh", "ceval"]
    assert benchmarks.items == 16 and benchmarks.plan.requests == len(benchmarks.plan.entries) == 64
    # The four letters of an item share one sequence (this word-level tokenizer reads Chinese as
    # unknown words, so some items' sequences coincide too).
    assert len(benchmarks.plan.sequences) <= 16
    assert parallel.tp == 2 and models[0].num_layers == 4
    # A rank parses the same arguments back.
    assert vars(parser.parse_args(worker_argv(args))) == vars(args)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source", ["docs/EVAL.md", "README.md", "megatron_cpt/eval/cli.py"])
def test_the_documented_commands_parse(source):
    from megatron_cpt.cli import build_parser
    from megatron_cpt.eval import cli

    text = cli.__doc__ if source.endswith(".py") else (REPO / source).read_text()
    text = re.sub(r"\\\s*\n\s*", " ", text)  # continuation lines
    commands = [line.split("megatron-cpt eval ", 1)[1] for line in text.splitlines()
                if "megatron-cpt eval --" in line]
    assert commands
    for command in commands:
        build_parser("eval").parse_args(["eval", *shlex.split(command)])


@pytest.mark.parametrize("override, message", [
    ("eval.interval=10", "eval.tasks: eval.interval is set but no task is named"),
    ("eval.tasks=[{format: cevall, path: x}]",
     "eval.tasks[0].format: expected one of ['ceval', 'cmmlu', 'mmlu', 'jsonl'], got 'cevall'"),
    ("eval.tasks=[{format: ceval, path: x}]", "eval.tokenizer: the tasks are text"),
])
def test_recipe_eval_section_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml", [override])


def test_train_refuses_a_missing_task_before_any_rank_starts(setup, capsys):
    tmp_path, _ = setup
    write_byte_dataset(tmp_path / "bytes", limit_bytes=20_000)
    assert main(["train", str(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"),
                 *byte_run_overrides(tmp_path / "bytes", steps=2), f"logging.run_dir={tmp_path / 'run'}",
                 "eval.interval=1", f"eval.tokenizer=hf:{tmp_path / 'tok'}",
                 f"eval.tasks=[{{format: ceval, path: {tmp_path / 'nowhere'}}}]"]) == 2
    err = capsys.readouterr().err
    assert f"task 'ceval' (ceval:{tmp_path / 'nowhere'}): no such file or directory" in err
    assert not (tmp_path / "run").exists()
