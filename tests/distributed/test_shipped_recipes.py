"""Every shipped H100 recipe in examples/, shrunk only where a 2-core machine must
(``shipped_recipes.shrink``), runs what a user's job runs: interval checkpoints as the recipe
writes them, a SIGTERM stop after an interval save (exit 75, no partial checkpoint), a resume to
the end (every step once, keep_last honoured) and a Hugging Face export that transformers loads.
A new recipe in examples/ gets this test by being there."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import run_cli, train, write_initial_weights
from shipped_recipes import STEPS, shipped_h100_recipes, shrink

from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint, whole_checkpoints
from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.run_files import read_metrics, read_starts
from megatron_cpt.train.preemption import EXIT_RESUMABLE


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped_recipes")
    # The shrunk recipes' model: the tiny preset (its own vocabulary) in the recipes' bf16.
    initial = write_initial_weights(root / "initial", ["model.preset=llama3-tiny",
                                                       "model.vocab_size=1000", "model.dtype=bf16"])
    return root, initial


def _stop_after_an_interval_save(recipe_path, run_dir, ckpt_dir, log_path) -> int:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "megatron_cpt", "train", str(recipe_path)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        try:
            # Past the first interval save (and, with async_save, its background write).
            while not ((ckpt_dir / "latest").is_file() and (run_dir / "metrics.jsonl").is_file()
                       and len((run_dir / "metrics.jsonl").read_text().splitlines()) > 4):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "no interval save within 300 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("recipe", shipped_h100_recipes(), ids=lambda p: p.stem)
def test_shrunk_recipe_stops_resumes_and_exports(recipe, shared, tmp_path):
    root, initial = shared
    path = shrink(recipe, tmp_path, root / "data", initial)
    shrunk = load_recipe(path)
    run_dir, ckpt_dir = tmp_path / "run", tmp_path / "checkpoints"
    assert shrunk.checkpoint.save_interval and shrunk.checkpoint.save_interval < STEPS

    status = _stop_after_an_interval_save(path, run_dir, ckpt_dir, tmp_path / "stop.log")
    assert status == EXIT_RESUMABLE, (tmp_path / "stop.log").read_text()[-6000:]
    (stopped,) = read_starts(run_dir)
    assert stopped.ended == "preempted" and stopped.last_step < STEPS
    assert find_resume_checkpoint(ckpt_dir).name == f"step_{stopped.last_step:06d}"
    assert not list(ckpt_dir.glob("*.tmp"))

    train([], recipe=path)
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, STEPS + 1))
    assert [s.ended for s in read_starts(run_dir)] == ["preempted", "finished"]
    whole = whole_checkpoints(ckpt_dir)
    assert whole[-1][0] == STEPS
    if shrunk.checkpoint.keep_last:
        assert len(whole) == shrunk.checkpoint.keep_last

    from transformers import AutoModelForCausalLM

    run_cli(["convert", "mcore-to-hf", "--ckpt-dir", str(whole[-1][1]), "--out-dir",
             str(tmp_path / "hf")])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert str(model.dtype).endswith(shrunk.model.dtype.replace("bf16", "bfloat16")
                                     .replace("fp32", "float32"))
    with torch.no_grad():
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits
    assert logits.shape == (1, 16, shrunk.model.vocab_size) and torch.isfinite(logits).all()
