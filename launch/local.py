"""Run a megatron-cpt worker module on N local ranks with torchrun's launcher (``--standalone``).

Used by ``megatron-cpt train``, ``convert`` and ``almr`` when they are not already inside a
distributed job (no ``WORLD_SIZE`` in the environment).

A user error raised in a rank reaches the user once, as one line with exit status 2, never as a
traceback per rank: ``run_rank`` (each worker's entry point) writes the message to a file that
``run_local`` names (the first rank to fail wins), a rank that fails only because that rank left
the job exits quietly, and ``run_local`` raises the message as a ``UserError`` for the CLI to print
instead of torchrun's failure report.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from megatron_cpt.errors import UserError, one_line

ERROR_FILE_ENV = "MEGATRON_CPT_ERROR_FILE"
# What the CLI reports as bad input (one line, exit 2), in the launcher and in every rank.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError)


def inside_distributed_job() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def run_local(module: str, args: list[str], nprocs: int,
              env: Optional[dict[str, str]] = None) -> int:
    """Start ``python -m module args`` on ``nprocs`` ranks (with ``env`` added to their
    environment); returns the job's exit status, or raises a rank's user error."""
    with tempfile.TemporaryDirectory(prefix="megatron-cpt-") as tmp:
        error_file = Path(tmp) / "user-error"
        rank_env = {ERROR_FILE_ENV: str(error_file), **(env or {})}
        # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: keep the cores busy on CPU.
        rank_env.setdefault("OMP_NUM_THREADS", os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs))))
        rank_env.setdefault("PYTHONUNBUFFERED", "1")
        status = _torchrun(module, args, nprocs, rank_env)
        if error_file.is_file():
            raise UserError(error_file.read_text().strip())
    return status


def _torchrun(module: str, args: list[str], nprocs: int, rank_env: dict[str, str]) -> int:
    """torchrun's own launcher, run in this process so that its failure report (a traceback and a
    table per rank) can be replaced by the ranks' own output and one summary line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    saved = dict(os.environ)
    os.environ.update(rank_env)  # the ranks inherit this process's environment
    logging.disable(logging.CRITICAL)  # the elastic agent's log lines repeat what ranks print
    try:
        parsed = get_args_parser().parse_args(
            ["--standalone", f"--nproc-per-node={nprocs}", "--no-python", sys.executable, "-m",
             module, *args])
        run(parsed)
        return 0
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if not Path(rank_env[ERROR_FILE_ENV]).is_file():
            print(f"megatron-cpt: rank {rank} exited with status {code} (its output is above)",
                  file=sys.stderr, flush=True)
        return code
    finally:
        logging.disable(logging.NOTSET)
        os.environ.clear()
        os.environ.update(saved)


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
