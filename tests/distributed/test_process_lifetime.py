"""No rank outlives its job, and a job that loses a rank ends in one line:

- SIGKILL to the whole process group of `megatron-cpt train` (a shell's `kill -9 -PGID`, an OOM kill
  of the launcher, a lost terminal): no rank is alive 30 s later;
- SIGKILL to the torchrun agent of Slurm's per-node command: the same;
- SIGKILL to one rank mid-step: the command ends within a bounded time with one last line naming
  the lost rank, exit 4, and the next start resumes;
- a rank asked to stop while blocked in a collective (its peer is frozen) exits after
  `train.stop_grace_minutes` with one line saying so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness import TINY_RECIPE, metrics
from token_fixtures import byte_run_overrides

from megatron_cpt.launch.failures import EXIT_FAILED

STEPS = 400  # long enough that every test acts mid-run


@pytest.fixture(scope="module")
def overrides(byte_data):
    return [*byte_run_overrides(byte_data, steps=STEPS), "model.vocab_size=257",
            "checkpoint.save_interval=2"]


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Whatever a failing test left running is killed with everything it started."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            for process in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                try:
                    process.kill()
                except (psutil.NoSuchProcess, ProcessLookupError):
                    pass


def _start(command: list[str], log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _started.append(proc)
    return proc


def _wait_for_steps(run_dir, proc, count: int, log_path) -> None:
    deadline = time.monotonic() + 300
    path = run_dir / "metrics.jsonl"
    while not (path.is_file() and len(path.read_text().splitlines()) >= count):
        assert proc.poll() is None, log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, f"fewer than {count} steps within 300 s"
        time.sleep(0.05)


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    """The ranks under the launcher, by rank: each leads a session of its own (forked by the
    launcher or started by torchrun), unlike the checkpoint writer's helpers forked from a rank."""
    ranks = []
    for process in psutil.Process(proc.pid).children(recursive=True):
        try:
            if os.getsid(process.pid) == process.pid:
                ranks.append(process)
        except ProcessLookupError:
            pass
    return sorted(ranks, key=lambda p: p.pid)  # started in rank order


def _assert_all_gone(processes: list[psutil.Process], within_s: float = 30) -> None:
    gone, alive = psutil.wait_procs(processes, timeout=within_s)
    assert not alive, f"still alive {within_s} s later: {[p.pid for p in alive]}"


def _train_command(overrides, run_dir) -> list[str]:
    return [sys.executable, "-m", "megatron_cpt", "train", str(TINY_RECIPE), *overrides,
            f"logging.run_dir={run_dir}"]


def test_ranks_die_with_the_launchers_process_group(overrides, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_train_command(overrides, run_dir), tmp_path / "log")
    _wait_for_steps(run_dir, proc, 3, tmp_path / "log")
    everything = psutil.Process(proc.pid).children(recursive=True)
    assert len(_ranks(proc)) == 2
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher; the ranks have sessions of their own
    proc.wait()
    _assert_all_gone(everything)


def test_ranks_die_with_their_torchrun_agent(overrides, tmp_path):
    run_dir = tmp_path / "run"
    # What each node of a Slurm job runs (launch/slurm.py torchrun_command), on one node.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "--module", "megatron_cpt.train.worker", str(TINY_RECIPE), *overrides,
               f"logging.run_dir={run_dir}"]
    proc = _start(command, tmp_path / "log")
    _wait_for_steps(run_dir, proc, 3, tmp_path / "log")
    everything = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # the agent alone
    proc.wait()
    _assert_all_gone(everything)


def test_a_rank_killed_mid_step_ends_the_job_in_one_line(overrides, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_train_command(overrides, run_dir), tmp_path / "log")
    _wait_for_steps(run_dir, proc, 5, tmp_path / "log")
    victim = _ranks(proc)[1]
    victim.kill()
    assert proc.wait(timeout=120) == EXIT_FAILED
    output = (tmp_path / "log").read_text()
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"megatron-cpt train: error: rank 1 (pid {victim.pid}) ended without "
                           f"a report (killed"), last
    assert "Traceback" not in output
    resumed = subprocess.run(_train_command(overrides + [f"train.stop_at_step={12}"], run_dir),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 13))


def test_a_rank_blocked_in_a_collective_still_stops(overrides, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_train_command(overrides + ["train.stop_grace_minutes=0.1"], run_dir),
                  tmp_path / "log")
    _wait_for_steps(run_dir, proc, 3, tmp_path / "log")
    ranks = dict(zip(("0", "1"), _ranks(proc)))
    ranks["1"].suspend()  # frozen mid-run: rank 0 waits for it in the next collective
    try:
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        psutil.wait_procs([ranks["0"]], timeout=60)
        assert not ranks["0"].is_running(), "rank 0 did not give up waiting"
    finally:
        ranks["1"].resume()
    assert proc.wait(timeout=120) == EXIT_FAILED
    last = (tmp_path / "log").read_text().strip().splitlines()[-1]
    assert last.startswith("megatron-cpt train: error: rank 0: asked to stop"), last
    assert "not at a step boundary" in last
