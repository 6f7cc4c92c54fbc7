"""Run a megatron-cpt worker module on N local ranks (``launch/rank_processes.py``: through
torchrun ``--standalone``, or, for ranks that see no GPU, forked from this process).

Used by ``megatron-cpt train``, ``convert``, ``eval`` and ``almr`` when they are not already inside a
distributed job (no ``WORLD_SIZE`` in the environment).

- **Stopping.** A SIGTERM to this process is passed once to the ranks themselves, not to torchrun,
  which would SIGKILL them after its shutdown timeout (30 s before torch 2.11) in the middle of the
  stop save. They save after the current step and exit; torchrun then ends normally. Further ones
  are not passed on, so they cannot cut a checkpoint write short. No moment of the start loses it:
  ``run_local``'s handler is in place before anything starts, SIGTERM is blocked while the ranks
  are started (so torchrun and the ranks begin with it blocked), one that came before a rank
  exists is passed on when it does, and a rank takes it only once its own handler is in place
  (``train.preemption.StopRequests.install``). Workers without one take it in ``run_rank``, once
  their pid file is written: it ends them, and the launcher names the rank it killed.
- **Lifetime.** torchrun and every rank get the kernel's parent-death signal
  (``process_lifetime.die_with_parent``): if this process dies, even by SIGKILL, torchrun is killed,
  and so is every rank whose torchrun agent is gone, or every forked rank. No rank outlives its job holding memory or a
  GPU.
- **One line per failure.** ``run_rank`` (every worker's entry point) turns a user error (exit 2)
  or a failure that is not a bug (``launch/failures.py``, exit 4: full disk, unwritable directory,
  lost peer, out of memory; a missing file is a user error, exit 2) into one line, written to a report that the first rank
  to fail creates. From then on the output of the ranks and of torchrun (peers that lost that
  rank, torchrun's failure summary) is dropped, and ``run_local`` raises the line for the CLI to
  print. A rank that ended without a word (SIGKILL, the OOM killer) is named as the cause. With
  ``--debug`` (``MEGATRON_CPT_DEBUG=1``) tracebacks are printed and nothing is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Callable, Optional

from megatron_cpt.errors import RunFailure, UserError, one_line
from megatron_cpt.launch.failures import EXIT_FAILED, explain_failure
from megatron_cpt.process_lifetime import die_with_parent, sigterm_blocked, unblock_sigterm

# How long torchrun lets its ranks finish a checkpoint after SIGTERM before it kills them.
SHUTDOWN_TIMEOUT_S = 1800
REPORT_DIR_ENV = "MEGATRON_CPT_REPORT_DIR"
DEBUG_ENV = "MEGATRON_CPT_DEBUG"
_FAILURE = "failure.json"
# What the CLI reports as bad input (one line, exit 2), in the launcher and in every rank.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError)


def inside_distributed_job() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def run_local(module: str, args: list[str], nprocs: int, run_dir: str | Path | None = None,
              env: Optional[dict[str, str]] = None) -> int:
    """Start ``python -m module args`` on ``nprocs`` ranks (``env`` added to their environment);
    returns the job's exit status, or raises the failure a rank reported.

    With ``run_dir`` (training), a run that stopped early with a checkpoint returns
    ``EXIT_RESUMABLE`` (75), read from ``RUN_DIR/progress.jsonl``: torchrun does not pass on the
    ranks' statuses.
    """
    from megatron_cpt.run_files import read_starts

    from megatron_cpt.launch.environment import cpus_per_rank
    from megatron_cpt.launch.rank_processes import (ForkedRanks, StopSignal, TorchrunRanks,
                                                    ranks_see_no_gpu)

    stop = StopSignal()
    previous = signal.signal(signal.SIGTERM, stop.record)
    try:
        with tempfile.TemporaryDirectory(prefix="megatron-cpt-") as tmp:
            reports = Path(tmp)
            child_env = {**os.environ, **(env or {}), REPORT_DIR_ENV: str(reports)}
            # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: keep the cores busy
            # (training passes its recipe's launch.cpu_threads; other verbs take the same rule).
            child_env.setdefault("OMP_NUM_THREADS", str(cpus_per_rank(nprocs)))
            child_env.setdefault("PYTHONUNBUFFERED", "1")
            child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
            starts_before = len(read_starts(run_dir)) if run_dir else 0
            # torchrun and the ranks begin with SIGTERM blocked, and the relay thread keeps it
            # blocked, so that this (main) thread takes it; one that came meanwhile is recorded on
            # leaving the block.
            with sigterm_blocked():
                if ranks_see_no_gpu(child_env):
                    ranks = ForkedRanks(module, args, nprocs, child_env)
                else:
                    ranks = TorchrunRanks(module, args, nprocs, child_env)
                relay = threading.Thread(target=_relay_stderr, args=(ranks.stderr, reports),
                                         daemon=True)
                relay.start()
            try:
                status = ranks.wait(stop)
            finally:
                relay.join()
            failure = _job_failure(reports, status)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure is not None:
        raise failure
    if run_dir:
        starts = read_starts(run_dir)
        if len(starts) > starts_before and starts[-1].resumable:
            from megatron_cpt.train.preemption import EXIT_RESUMABLE

            return EXIT_RESUMABLE
    return status


def _relay_stderr(pipe, reports: Path) -> None:
    """Pass the job's stderr through as it comes (progress bars included) until a rank has
    reported a failure; what follows is only the echo of that failure."""
    out = sys.stderr.buffer
    keep_all = debugging()
    while chunk := os.read(pipe.fileno(), 65536):
        if keep_all or not (reports / _FAILURE).exists():
            out.write(chunk)
            out.flush()
    pipe.close()


def _job_failure(reports: Path, status: int) -> Optional[RunFailure]:
    """The failure to report for the job, or None: a rank's report, preceded by any rank that
    ended without a word (killed), which is then the first cause."""
    silent = [(int(p.stem.split("-")[1]), p.read_text().strip())
              for p in sorted(reports.glob("rank-*.pid")) if not p.with_suffix(".done").exists()]
    killed = "; ".join(f"rank {rank} (pid {pid}) ended without a report (killed: a signal, or "
                       f"the out-of-memory killer)" for rank, pid in silent)
    report_path = reports / _FAILURE
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        message = report["message"]
        if killed and report["status"] != 2:
            message = f"{killed}; then {message}"
        return RunFailure(message, report["status"])
    if killed and status != 0:
        return RunFailure(killed, EXIT_FAILED)
    return None


def run_rank(main: Callable[[], int], verb: str) -> int:
    """A worker's entry point: ``main``'s status; a user error becomes one line and status 2, a
    failure that is not a bug one line and status 4 (``launch/failures.py``)."""
    from megatron_cpt.runtime.quiet import quiet_known_warnings

    die_with_parent(os.getppid())  # torchrun's agent, or whatever started this rank
    rank = os.environ.get("RANK", "0")
    reports = os.environ.get(REPORT_DIR_ENV)
    if reports:
        (Path(reports) / f"rank-{rank}.pid").write_text(str(os.getpid()))
    # A worker without a SIGTERM handler of its own is ended by one from here on, and then named
    # by the launcher from its pid file. (The training worker took SIGTERM earlier, handled.)
    unblock_sigterm()
    quiet_known_warnings()
    if not debugging():
        # Its writer logs the error it then raises, which is reported here in one line.
        logging.getLogger("megatron.core.dist_checkpointing").setLevel(logging.CRITICAL)
    try:
        return main()
    except USER_ERRORS as exc:
        report_failure(verb, one_line(exc), 2)
        return 2
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # torch's CheckpointException is one; bugs are re-raised below
        message = explain_failure(exc)
        if message is None:
            if _reported_elsewhere():
                return EXIT_FAILED  # this rank lost its peers because another rank failed first
            raise
        if debugging():
            traceback.print_exc()
        report_failure(verb, f"rank {rank}: {message}", EXIT_FAILED)
        return EXIT_FAILED
    finally:
        if reports:
            (Path(reports) / f"rank-{rank}.done").touch()


def error_prefix(verb: str) -> str:
    """How a failure line names what failed: the command a user ran; or, in a rank of a Slurm job
    step (the batch script of ``launch slurm`` starts the ranks itself), that step as squeue and
    sacct name it, ``megatron-cpt job JOBID.STEPID (verb)``."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and step and not os.environ.get(REPORT_DIR_ENV):
        return f"megatron-cpt job {job}.{step} ({verb})"
    return f"megatron-cpt {verb}"


def report_failure(verb: str, message: str, status: int) -> None:
    """Say ``message`` once for the job: in the report the launcher reads (the first rank to fail
    wins), or, started by another launcher (Slurm), on this rank's stderr."""
    reports = os.environ.get(REPORT_DIR_ENV)
    if not reports:
        print(f"{error_prefix(verb)}: error: {message}", file=sys.stderr, flush=True)
        return
    (Path(reports) / f"rank-{os.environ.get('RANK', '0')}.done").touch()  # it has spoken
    path = Path(reports) / _FAILURE
    staging = path.with_name(f"{_FAILURE}.{os.getpid()}")
    staging.write_text(json.dumps({"message": message, "status": status}))
    try:
        os.link(staging, path)  # atomic, and fails when another rank reported first
    except FileExistsError:
        pass
    finally:
        staging.unlink()


def _reported_elsewhere() -> bool:
    reports = os.environ.get(REPORT_DIR_ENV)
    return bool(reports) and (Path(reports) / _FAILURE).is_file()
