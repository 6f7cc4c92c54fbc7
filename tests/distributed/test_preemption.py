"""Stopping early outside Slurm, with interval checkpoints on as in every H100 recipe (blocking and
background writes): SIGTERM to `megatron-cpt train` after interval saves (and a second one to every
process, checkpoint writers included, while a checkpoint is written) saves after the current step
and exits 75; so does the wall-clock budget `train.time_limit_minutes`. No partial checkpoint is
left, and resuming gives the losses of an uninterrupted run, bitwise."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness import TINY_RECIPE, losses, metrics, train
from token_fixtures import EOD_ID

from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint
from megatron_cpt.train.preemption import EXIT_RESUMABLE
from megatron_cpt.run_files import read_starts

STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, byte_data, reference_run):
    root = tmp_path_factory.mktemp("preemption")
    # llama3-small: a checkpoint write long enough to send a second SIGTERM into.
    args = [f"data.paths=[{byte_data}]", "data.eod_token_id=0", "model.preset=llama3-small",
            "model.dtype=fp32", f"train.steps={STEPS}", "train.global_batch_size=4",
            "train.micro_batch_size=1", "train.seq_length=64", "optim.schedule.warmup_steps=2",
            "checkpoint.save_interval=2", "logging.tensorboard=false",
            "launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2"]
    assert EOD_ID == 0
    # Checkpoints leave the arithmetic alone: the uninterrupted run needs none.
    reference = reference_run(args + ["checkpoint.save_interval=0", "checkpoint.save_at_end=false"])
    return root, args, losses(reference)


def _signal_all(pid: int, signum: int) -> None:
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _wait(predicate, proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _assert_resumes_to_reference(run_dir, args, reference, stopped_at: int) -> None:
    out = train(args + [f"logging.run_dir={run_dir}"])
    assert f"at step {stopped_at}" in out.stdout
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, STEPS + 1))
    assert losses(run_dir) == reference


@pytest.mark.parametrize("async_save", [False, True])
def test_sigterm_after_interval_saves_exits_resumable(setup, async_save):
    root, args, reference = setup
    args = args + [f"checkpoint.async_save={str(async_save).lower()}"]
    run_dir = root / f"sigterm_async_{async_save}"
    log_path = root / f"sigterm_async_{async_save}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "megatron_cpt", "train", str(TINY_RECIPE), *args,
                             f"logging.run_dir={run_dir}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        metrics_file = run_dir / "metrics.jsonl"
        # Past step 2's interval save: its writer processes exist when the signal comes.
        _wait(lambda: metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 3,
              proc, 300, "three steps")
        proc.send_signal(signal.SIGTERM)  # to `megatron-cpt train`, as a user or a scheduler would
        ckpt = run_dir / "checkpoints"
        # Once the ranks have taken the first signal (two signals close together count as one)
        # and a checkpoint is being written.
        _wait(lambda: log_path.read_text().count("SIGTERM received: saving") == 2, proc, 120,
              "the ranks to take the signal")
        _wait(lambda: any(ckpt.glob("step_*.tmp")), proc, 120, "the checkpoint write")
        # Again, to the launcher, every rank and every process they started (checkpoint writers).
        _signal_all(proc.pid, signal.SIGTERM)
        status = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            _signal_all(proc.pid, signal.SIGKILL)
        log.close()
    output = log_path.read_text()
    assert status == EXIT_RESUMABLE, output[-6000:]
    assert "received again: still stopping" in output
    (start,) = read_starts(run_dir)
    assert start.ended == "preempted" and 3 <= start.last_step < STEPS
    assert [r["step"] for r in metrics(run_dir)][-1] == start.last_step
    saved = find_resume_checkpoint(run_dir / "checkpoints")
    assert saved is not None and saved.name == f"step_{start.last_step:06d}"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    _assert_resumes_to_reference(run_dir, args, reference, start.last_step)


def test_wall_clock_budget_saves_and_exits_resumable(setup):
    root, args, reference = setup
    run_dir = root / "budget"
    # 60 ms from the start of set-up: spent before the first step ends, so the run stops there.
    args = args + ["checkpoint.async_save=true"]
    proc = train(args + [f"logging.run_dir={run_dir}", "train.time_limit_minutes=0.001"],
                 check=False)
    assert proc.returncode == EXIT_RESUMABLE, proc.stderr[-4000:]
    (start,) = read_starts(run_dir)
    assert (start.ended, start.last_step) == ("time_limit", 1)
    _assert_resumes_to_reference(run_dir, args, reference, start.last_step)
