"""Run a megatron-cpt worker module on N local processes through torchrun (``--standalone``).

Used by ``megatron-cpt train``, ``convert`` and ``almr`` when they are not already inside a
distributed job (no ``WORLD_SIZE`` in the environment). A SIGTERM to this process is passed once to
the ranks themselves, not to torchrun, which would SIGKILL them after its shutdown timeout (30 s
before torch 2.11) in the middle of the stop save; further ones are not passed on, so they cannot
cut a checkpoint write short.

A user error raised in a rank reaches the user once, as one line with exit status 2, never as a
traceback per rank: ``run_rank`` (each worker's entry point) writes the message to a file that
``run_local`` names (the first rank to fail wins); from then on the output the ranks and torchrun
send to stderr (peers that lost that rank, torchrun's failure report) is dropped, and
``run_local`` raises the message as a ``UserError`` for the CLI to print.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

from megatron_cpt.errors import UserError, one_line

# How long torchrun lets its ranks finish a checkpoint after SIGTERM before it kills them.
SHUTDOWN_TIMEOUT_S = 1800
ERROR_FILE_ENV = "MEGATRON_CPT_ERROR_FILE"
# What the CLI reports as bad input (one line, exit 2), in the launcher and in every rank.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError)


def inside_distributed_job() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def run_local(module: str, args: list[str], nprocs: int, run_dir: str | Path | None = None,
              env: Optional[dict[str, str]] = None) -> int:
    """Start ``python -m module args`` on ``nprocs`` ranks (``env`` added to their environment);
    returns the job's exit status, or raises the user error a rank reported.

    With ``run_dir`` (training), a run that stopped early with a checkpoint returns
    ``EXIT_RESUMABLE`` (75), read from ``RUN_DIR/progress.jsonl``: torchrun does not pass on the
    ranks' statuses, and exits non-zero itself after a SIGTERM.
    """
    from megatron_cpt.train.progress_log import read_starts

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nprocs}", "--no-python", sys.executable, "-m", module, *args]
    with tempfile.TemporaryDirectory(prefix="megatron-cpt-") as tmp:
        error_file = Path(tmp) / "user-error"
        child_env = {**os.environ, **(env or {}), ERROR_FILE_ENV: str(error_file)}
        # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: keep the cores busy on CPU.
        child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
        starts_before = len(read_starts(run_dir)) if run_dir else 0
        torchrun = subprocess.Popen(command, env=child_env, stderr=subprocess.PIPE)
        relay = threading.Thread(target=_relay_stderr, args=(torchrun.stderr, error_file),
                                 daemon=True)
        relay.start()
        forwarded = []

        def forward_once(signum, _frame):
            if not forwarded:
                forwarded.append(signum)
                _signal_ranks(torchrun, signum)

        previous = signal.signal(signal.SIGTERM, forward_once)
        try:
            status = torchrun.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            relay.join()
        if error_file.is_file():
            raise UserError(error_file.read_text().strip())
    if run_dir:
        starts = read_starts(run_dir)
        if len(starts) > starts_before and starts[-1].resumable:
            from megatron_cpt.train.preemption import EXIT_RESUMABLE

            return EXIT_RESUMABLE
    return status


def _signal_ranks(torchrun: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to torchrun's ranks (its child processes): they save, exit, and torchrun
    ends with them. Before any rank has started, to torchrun."""
    import psutil

    try:
        ranks = psutil.Process(torchrun.pid).children()
    except psutil.NoSuchProcess:
        return
    if not ranks:
        torchrun.send_signal(signum)
    for rank in ranks:
        try:
            rank.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _relay_stderr(pipe, error_file: Path) -> None:
    """Pass the job's stderr through as it comes (progress bars included) until a rank has
    reported a user error; what follows is only the echo of that error."""
    out = sys.stderr.buffer
    while chunk := os.read(pipe.fileno(), 65536):
        if not error_file.exists():
            out.write(chunk)
            out.flush()
    pipe.close()


def run_rank(main: Callable[[], int], verb: str) -> int:
    """A worker's entry point: ``main``'s status; a user error becomes one line and status 2."""
    from megatron_cpt.runtime.quiet import quiet_known_warnings

    quiet_known_warnings()
    try:
        return main()
    except USER_ERRORS as exc:
        _report(verb, one_line(exc))
        return 2
    except Exception:
        if _reported_elsewhere():
            return 2  # this rank lost its peers because another rank stopped on a user error
        raise


def _report(verb: str, message: str) -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:  # started by another launcher: each failing rank says it once
        print(f"megatron-cpt {verb}: error: {message}", file=sys.stderr, flush=True)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # another rank reported first
    with os.fdopen(fd, "w") as handle:
        handle.write(message)


def _reported_elsewhere() -> bool:
    path = os.environ.get(ERROR_FILE_ENV)
    return bool(path) and Path(path).is_file()
