"""The ranks of a local launch start with SIGTERM blocked; one sent to a rank before it can take it
waits. The training worker's handler takes it once installed (the run then stops after its first
step); a worker without a handler is ended by it in ``run_rank``, after its pid file is written,
so that the launcher names the rank. Each case runs in a process of its own (signal state)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from megatron_cpt.launch.failures import EXIT_FAILED
from megatron_cpt.launch.local import REPORT_DIR_ENV, _job_failure

# As a rank of a local launch starts: SIGTERM blocked, and one already sent to it.
SIGTERM_PENDING = ("import os, signal, sys\n"
                   "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
                   "os.kill(os.getpid(), signal.SIGTERM)\n")


def _run(code: str, env: dict[str, str] | None = None) -> tuple[int, int, str, str]:
    """pid, exit status, stdout and stderr of ``python -c SIGTERM_PENDING + code``."""
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_PENDING + code], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid, proc.returncode, stdout, stderr


def test_the_stop_handler_takes_a_sigterm_sent_before_it_was_installed():
    _, status, stdout, stderr = _run("from megatron_cpt.train.preemption import StopRequests\n"
                                     "stops = StopRequests()\n"
                                     "stops.install()\n"
                                     "print('asked to stop by', stops.signal_name)\n")
    assert status == 0, stderr[-3000:]
    assert "SIGTERM received: saving a checkpoint after this step" in stdout
    assert stdout.splitlines()[-1] == "asked to stop by SIGTERM"


def test_a_worker_without_a_handler_is_ended_and_named(tmp_path):
    pid, status, stdout, stderr = _run(
        "from megatron_cpt.launch.local import run_rank\n"
        "sys.exit(run_rank(lambda: print('the worker ran') or 0, 'test'))\n",
        env={REPORT_DIR_ENV: str(tmp_path), "RANK": "1"})
    assert status == -signal.SIGTERM, stderr[-3000:]
    assert "the worker ran" not in stdout
    failure = _job_failure(tmp_path, status)
    assert failure is not None and failure.exit_status == EXIT_FAILED
    assert str(failure).startswith(f"rank 1 (pid {pid}) ended without a report (killed")
