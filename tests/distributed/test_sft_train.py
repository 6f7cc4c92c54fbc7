"""Supervised fine-tuning end to end, the demo in miniature: manual pages -> `data demo-chat` ->
`data prepare-chat` (the sentencepiece tokenizer's Llama-3 chat template) -> `megatron-cpt train`
on packed conversations (2 CPU ranks, DP2, distributed optimizer) -> `convert mcore-to-hf` ->
`convert generate --chat`. The chat model answers its training questions exactly; the export's
chat template renders the training ids and stops at the end of a turn; a run killed by SIGTERM
resumes to the uninterrupted run's losses, bitwise; a checkpoint resumed at PP2 with virtual
stages continues the same losses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from data_fixtures import many_docs, write_jsonl  # noqa: E402
from harness import REPO, kill_tree, metrics, run_cli, train  # noqa: E402

from megatron_cpt.cli import main  # noqa: E402
from megatron_cpt.train.preemption import EXIT_RESUMABLE  # noqa: E402

RECIPE = REPO / "examples" / "demo_llama3_tiny_sft_2xcpu.yaml"
PAGES = {
    "en": [("grep", "print lines that match patterns"), ("sort", "sort lines of text files"),
           ("head", "output the first part of files"), ("tail", "output the last part of files"),
           ("wc", "print newline, word, and byte counts"), ("tee", "read from input, write to files"),
           ("uniq", "report or omit repeated lines"), ("touch", "change file timestamps"),
           ("rmdir", "remove empty directories"), ("mkdir", "make directories"),
           ("sleep", "delay for a specified amount of time"), ("true", "do nothing, successfully")],
    "zh": [("cat", "连接文件并在标准输出上输出"), ("cp", "复制文件和目录"), ("mv", "移动或重命名文件"),
           ("rm", "删除文件或目录"), ("ls", "列出目录内容"), ("ln", "在文件之间建立连接"),
           ("df", "报告文件系统磁盘空间的使用情况"), ("du", "估计文件空间使用量"),
           ("pwd", "输出当前工作目录的名称"), ("date", "打印或设置系统日期和时间"),
           ("echo", "显示一行文本"), ("kill", "终止进程")],
}
HEADINGS = {"en": ("NAME", "SYNOPSIS"), "zh": ("名称", "概述")}


def _overrides(root: Path, run: str) -> list[str]:
    return [f"data.chat.prefixes=[{root / 'man_qa'}]", "data.eod_token_id=2",
            "model.vocab_size=600", "train.seq_length=128", "data.chat.epochs=40",
            "train.eval_interval=20", "checkpoint.save_interval=20", "logging.tensorboard=false",
            f"logging.run_dir={root / run}"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    for language, pages in PAGES.items():
        name, synopsis = HEADINGS[language]
        write_jsonl(root / "corpus" / f"{language}_manpages.jsonl",
                    [f"{name}\n\n{cmd} - {what}\n\n{synopsis}\n\n{cmd} [OPTION]... {what}"
                     for cmd, what in pages])
    write_jsonl(root / "text" / "docs.jsonl", many_docs(400))
    assert main(["data", "train-tokenizer", "--input", str(root / "corpus"), str(root / "text"),
                 "--vocab-size", "600", "--output", str(root / "tokenizer")]) == 0
    assert main(["data", "demo-chat", str(root / "corpus"), "--output", str(root / "man_qa.jsonl"),
                 "--per-language", "6"]) == 0
    assert main(["data", "prepare-chat", "--input", str(root / "man_qa.jsonl"), "--output-prefix",
                 str(root / "man_qa"), "--tokenizer", f"hf:{root / 'tokenizer'}", "--seq-length",
                 "128", "--no-progress"]) == 0
    # Its step-20 checkpoint is resumed at PP2 with virtual stages below: reshardable.
    train(_overrides(root, "reference") + ["checkpoint.reshardable=true"], recipe=RECIPE)
    return root


def _trained_conversations(root: Path) -> list[dict]:
    rows = [json.loads(line) for line in (root / "man_qa.jsonl").read_text().splitlines()]
    held_out = json.loads((root / "reference" / "chat_data.json").read_text())["sources"][0]
    return [row for i, row in enumerate(rows) if i not in set(held_out["valid_indices"])]


def test_the_chat_export_answers_its_training_questions(sft, capsys):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    ckpt = sft / "reference" / "checkpoints" / (sft / "reference" / "checkpoints" / "latest").read_text().strip()
    assert json.loads((ckpt / "megatron_cpt.json").read_text())["chat"]["end_of_turn_id"] == 5
    run_cli(["convert", "mcore-to-hf", "--ckpt-dir", str(ckpt), "--out-dir", str(sft / "hf"),
             "--tokenizer-from", str(sft / "tokenizer")])
    assert json.loads((sft / "hf" / "generation_config.json").read_text())["eos_token_id"] == [2, 5]
    tokenizer = AutoTokenizer.from_pretrained(sft / "hf")
    ids = IndexedDataset(str(sft / "man_qa"))
    rows = [json.loads(line) for line in (sft / "man_qa.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):  # the export's template renders the ids trained on
        assert tokenizer.apply_chat_template(row["messages"], return_dict=False) == ids[index].tolist()
    conversations = _trained_conversations(sft)
    questions = [arg for row in conversations for arg in ("--chat", row["messages"][0]["content"])]
    assert main(["convert", "generate", "--hf-dir", str(sft / "hf"), "--max-new-tokens", "40",
                 *questions]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    exact = [line == f"  {row['messages'][0]['content']} -> {row['messages'][1]['content']}"
             for line, row in zip(lines, conversations, strict=True)]
    assert sum(exact) >= 0.9 * len(exact), "\n".join(lines)


def _wait_for_steps(run_dir: Path, proc, steps: int) -> None:
    deadline = time.monotonic() + 300
    path = run_dir / "metrics.jsonl"
    while not (path.is_file() and len(path.read_text().splitlines()) >= steps):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended or hung"
        time.sleep(0.01)


def test_a_killed_run_resumes_to_the_same_losses_bitwise(sft):
    run_dir = sft / "killed"
    with open(sft / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "megatron_cpt", "train", str(RECIPE),
                                 *_overrides(sft, "killed")], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_steps(run_dir, proc, 3)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=300) == EXIT_RESUMABLE
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
    train(_overrides(sft, "killed"), recipe=RECIPE)
    keys = ("step", "loss", "grad_norm", "batch_digest", "val_loss", "tokens")
    reference = [{k: r.get(k) for k in keys} for r in metrics(sft / "reference")]
    assert [{k: r.get(k) for k in keys} for r in metrics(run_dir)] == reference


def test_a_checkpoint_resumes_at_pp2_with_virtual_stages(sft):
    ckpt_dir = sft / "layout" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    shutil.copytree(sft / "reference" / "checkpoints" / "step_000020", ckpt_dir / "step_000020")
    (ckpt_dir / "latest").write_text("step_000020\n")
    train(_overrides(sft, "layout") + ["parallel.pp=2", "parallel.vpp=2", "train.stop_at_step=24"],
          recipe=RECIPE)
    assert json.loads((sft / "layout" / "layout.json").read_text())["vpp"] == 2
    reference = {r["step"]: r for r in metrics(sft / "reference")}
    for record in metrics(sft / "layout"):
        expected = reference[record["step"]]
        assert record["batch_digest"] == expected["batch_digest"]
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-5), record["step"]
