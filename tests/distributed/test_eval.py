"""Benchmark accuracy on 2 CPU ranks, fp32, with a tiny Llama trained on the items it is scored on:

- in training: evaluated every ``eval.interval`` steps; a run killed during an evaluation and
  resumed (in another layout) has each step's record once, the evaluations at every interval,
  and the known answer at the end (every item right);
- per-item log-likelihoods agree at TP2, PP2 and TP1 (DP2) within 1e-5, and ``megatron-cpt eval``
  agrees with lm-evaluation-harness's ``hf`` model on the Hugging Face export within 1e-4, with
  the same accuracy.

The scored task ``qa`` asks which of four answers follows a question; the four are the answers of
four different training questions, so only a model that learned which answer follows which
question gets them right. ``ceval`` (letter scoring, 1-shot) is scored beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from data_fixtures import SAMPLE_DOCS, build_hf_tokenizer, write_jsonl  # noqa: E402
from eval_fixtures import ITEMS, LETTERS, write_ceval  # noqa: E402
from harness import metrics, run_cli, run_until_then_kill, train  # noqa: E402

from megatron_cpt.checkpointing.dist_io import PAUSE_ENV  # noqa: E402
from megatron_cpt.cli import main  # noqa: E402

STEPS, INTERVAL = 80, 10
QA = [(q, c[LETTERS.index(a)]) for s in ITEMS for q, c, a in ITEMS[s]["val"]]


def _write_qa(root: Path) -> Path:
    """test.jsonl: each question with its answer and the answers of the next three questions."""
    root.mkdir(parents=True)
    lines = []
    for index, (question, answer) in enumerate(QA):
        others = [QA[(index + k) % len(QA)][1] for k in (1, 2, 3)]
        position = index % 4
        lines.append({"question": question, "choices": others[:position] + [answer] + others[position:],
                      "answer": position})
    (root / "test.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n"
                                             for line in lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tasks = [{"name": "qa", "format": "jsonl", "path": str(_write_qa(root / "qa")),
              "scoring": "text", "language": "zh"},
             {"format": "ceval", "path": str(write_ceval(root / "ceval")), "shots": 1}]
    (root / "tasks.yaml").write_text(yaml.safe_dump({"tasks": tasks}, allow_unicode=True))
    # A byte-level BPE (Llama-3's kind of tokenizer), 400 tokens, end of text = 1.
    build_hf_tokenizer(root / "tok", [q + a for q, a in QA] + SAMPLE_DOCS, vocab_size=400)
    write_jsonl(root / "corpus" / "qa.jsonl", [q + a for q, a in QA])
    assert main(["data", "prepare", "--input", str(root / "corpus"), "--output-prefix",
                 str(root / "data" / "qa"), "--tokenizer", f"hf:{root / 'tok'}", "--no-progress"]) == 0
    run_dir = root / "run"
    common = [f"data.paths=[{root / 'data' / 'qa'}]", "data.eod_token_id=1", "model.vocab_size=400",
              f"train.steps={STEPS}", "train.global_batch_size=8", "train.micro_batch_size=2",
              "train.seq_length=64", "optim.lr=1e-2", "optim.min_lr=1e-2",
              "optim.schedule.warmup_steps=2", "logging.tensorboard=false",
              f"logging.run_dir={run_dir}", f"checkpoint.save_interval={INTERVAL}",
              # resumed below in another layout: the optimizer state saved per parameter
              "checkpoint.reshardable=true",
              f"eval.interval={INTERVAL}", f"eval.tokenizer=hf:{root / 'tok'}",
              "eval.micro_batch_size=3", "eval.tasks=" + json.dumps(tasks)]
    # TP2 with sequence parallelism, killed during the evaluation of step 20 (one batch scored).
    run_until_then_kill(common + ["parallel.tp=2"],
                        lambda: (run_dir / "paused-at-evaluation-20").exists(), root / "kill.log",
                        {PAUSE_ENV: "evaluation-20"})
    killed = [record["step"] for record in metrics(run_dir)]
    # Resumed from step 10 at PP2 with two virtual stages per rank (the interleaved schedule).
    resumed = train(common + ["parallel.tp=1", "parallel.pp=2", "parallel.vpp=2"]).stdout
    return root, run_dir, killed, resumed


def test_in_training_evaluation_runs_at_its_interval_and_survives_a_kill(trained):
    root, run_dir, killed, resumed = trained
    assert killed == list(range(1, 20))  # step 20's record waits for its evaluation
    assert f"resumed from {run_dir / 'checkpoints' / 'step_000010'} at step 10" in resumed
    layout = json.loads((run_dir / "layout.json").read_text())
    assert (layout["tp"], layout["pp"], layout["vpp"]) == (1, 2, 2)
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    evaluated = [r for r in records if "eval_acc/qa" in r]
    assert [r["step"] for r in evaluated] == list(range(INTERVAL, STEPS + 1, INTERVAL))
    for record in evaluated:
        assert len(record["eval_item_correct/qa"]) == len(record["eval_item_correct/ceval"]) == 8
        assert record["eval_acc/qa"] == sum(record["eval_item_correct/qa"]) / 8
        assert record["eval_acc_time_s"] > 0
    # The known answer: trained on the question-answer pairs, the model gets every item right.
    assert evaluated[-1]["eval_item_correct/qa"] == [1] * 8


@pytest.fixture(scope="module")
def scored(trained):
    """The last checkpoint scored by ``megatron-cpt eval`` at PP2 (2 ranks), and by one job at
    TP2 and at TP1 x DP2 (tests/distributed/score_layouts.py)."""
    root, run_dir, _, _ = trained
    ckpt = run_dir / "checkpoints" / f"step_{STEPS:06d}"
    proc = run_cli(["eval", "--ckpt-dir", str(ckpt), "--tokenizer", f"hf:{root / 'tok'}", "--tasks",
                    str(root / "tasks.yaml"), "--pp", "2", "--cpu", "--out", str(root / "eval.json")])
    assert "overall (95% interval)" in proc.stdout
    report = json.loads((root / "eval.json").read_text())
    assert report["layout"] == {"tp": 1, "pp": 2, "vpp": None, "dp": 1}
    results = report["checkpoints"][0]["results"]
    layouts = {"pp2": [np.array([item["logprobs"] for item in task["items"]]) for task in results]}
    script = Path(__file__).with_name("score_layouts.py")
    out = root / "layouts.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script), str(ckpt), str(root / "tasks.yaml"),
                           f"hf:{root / 'tok'}", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    layouts.update({name: [np.array(task) for task in tasks]
                    for name, tasks in json.loads(out.read_text()).items()})
    return ckpt, results, layouts


def test_layouts_agree_per_item(trained, scored):
    root, run_dir, _, _ = trained
    _, results, layouts = scored
    for name in ("tp2", "tp1_dp2"):
        for a, b in zip(layouts["pp2"], layouts[name], strict=True):
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5, name
    # The in-training evaluation of the last step (at PP2 x VPP2) chose the same answers.
    assert [int(item["chosen"] == item["answer"]) for item in results[0]["items"]] == \
        metrics(run_dir)[-1]["eval_item_correct/qa"]


def test_eval_command_agrees_with_lm_evaluation_harness_on_the_export(trained, scored,
                                                                      monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from megatron_cpt.eval.cli import tasks_from_file
    from megatron_cpt.eval.prompts import choice_requests
    from megatron_cpt.eval.results import task_result
    from megatron_cpt.eval.tasks import load_task

    root = trained[0]
    ckpt, results, _ = scored
    run_cli(["convert", "mcore-to-hf", "--ckpt-dir", str(ckpt), "--out-dir", str(root / "hf"),
             "--tokenizer-from", str(root / "tok")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    harness = HFLM(pretrained=str(root / "hf"), device="cpu", dtype="float32", batch_size=4,
                   add_bos_token=False)
    for config, result in zip(tasks_from_file(str(root / "tasks.yaml")), results, strict=True):
        task = load_task(config)
        requests = [Instance("loglikelihood", {}, pair, index)
                    for item in task.items for index, pair in enumerate(choice_requests(task, item))]
        theirs = np.array([ll for ll, _ in harness.loglikelihood(requests, disable_tqdm=True)])
        ours = np.array([value for item in result["items"] for value in item["logprobs"]])
        assert np.abs(theirs - ours).max() <= 1e-4, config.label
        assert task_result(task, theirs).overall.accuracy == result["overall"]["accuracy"]
    assert results[0]["overall"]["accuracy"] == 1.0
