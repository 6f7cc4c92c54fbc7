"""Stopping after step 5 and resuming gives the losses of an uninterrupted run, and a run killed
while it writes a checkpoint resumes from the previous one."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness import TINY_RECIPE, losses, metrics, train, write_initial_weights
from token_fixtures import EOD_ID, write_byte_dataset

TP1_PP2 = ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2"]
TP2_PP1 = ["launch.procs_per_node=2", "parallel.tp=2", "parallel.pp=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    prefix = root / "stdlib"
    write_byte_dataset(prefix)
    common = [f"data.paths=[{prefix}]", f"data.eod_token_id={EOD_ID}", "model.dtype=fp32",
              "train.steps=10", "train.global_batch_size=4", "train.micro_batch_size=1",
              "train.seq_length=64", "optim.schedule.warmup_steps=2", "logging.tensorboard=false"]
    init = write_initial_weights(root / "init", common)
    return root, common + [f"checkpoint.pretrained={init}"]


def test_resume_matches_uninterrupted_run(setup):
    root, common = setup
    full, split, resharded = root / "full", root / "split", root / "resharded"
    train(common + TP1_PP2 + [f"logging.run_dir={full}"])
    train(common + TP1_PP2 + [f"logging.run_dir={split}", "train.stop_at_step=5"])
    assert (split / "checkpoints" / "latest").read_text().strip() == "step_000005"
    shutil.copytree(split, resharded)

    out = train(common + TP1_PP2 + [f"logging.run_dir={split}"])
    assert "resumed from" in out.stdout and "at step 5" in out.stdout
    reference = losses(full)
    assert len(reference) == 10
    # Same layout: bitwise.
    assert losses(split) == reference

    # Different layout (TP1-PP2 checkpoint resumed at TP2-PP1): megatron-core reshards model and
    # optimizer state; the arithmetic differs only in reduction order.
    train(common + TP2_PP1 + [f"logging.run_dir={resharded}"])
    for step, (a, b) in enumerate(zip(reference[5:], losses(resharded)[5:]), start=6):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: {a} vs {b}"
    assert len(losses(resharded)) == 10


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every rank (torchrun starts ranks in sessions of their own)."""
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_kill_during_checkpoint_write_keeps_previous(setup):
    root, common = setup
    run_dir = root / "killed"
    ckpt = run_dir / "checkpoints"
    # A larger model makes the write long enough to be caught in the act.
    args = common[:-1] + ["model.preset=llama3-small", "model.vocab_size=8000", "model.dtype=fp32",
                          "data.eod_token_id=0",
                          "checkpoint.save_interval=5", f"logging.run_dir={run_dir}"] + TP1_PP2
    command = [sys.executable, "-m", "megatron_cpt", "train", str(TINY_RECIPE), *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not (ckpt / "step_000010.tmp").exists():
            assert proc.poll() is None, "training ended before the step-10 checkpoint was caught"
            assert time.monotonic() < deadline, "no checkpoint write seen"
            time.sleep(0.005)
        _kill_tree(proc.pid)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
        proc.wait()
    assert (ckpt / "latest").read_text().strip() == "step_000005"
    assert not (ckpt / "step_000010").exists()

    out = train(args)
    assert f"resumed from {ckpt / 'step_000005'} at step 5" in out.stdout
    assert (ckpt / "latest").read_text().strip() == "step_000010"
    # Steps 6-10 of the killed run were dropped from metrics.jsonl and run again.
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 11))
