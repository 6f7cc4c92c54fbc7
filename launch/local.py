"""Run a megatron-cpt worker module on N local processes through torchrun (``--standalone``).

Used by ``megatron-cpt train`` and ``megatron-cpt convert`` when they are not already inside a
distributed job (no ``WORLD_SIZE`` in the environment). A SIGTERM to this process is passed to
torchrun once, which passes it to the ranks; further ones are not passed on, so they cannot cut a
checkpoint write short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

# How long torchrun lets its ranks finish a checkpoint after SIGTERM before it kills them.
SHUTDOWN_TIMEOUT_S = 1800


def inside_distributed_job() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def run_local(module: str, args: list[str], nprocs: int, run_dir: str | Path | None = None) -> int:
    """Start ``python -m module args`` on ``nprocs`` ranks; returns the job's exit status.

    With ``run_dir`` (training), a run that stopped early with a checkpoint returns
    ``EXIT_RESUMABLE`` (75), read from ``RUN_DIR/progress.jsonl``: torchrun does not pass on the
    ranks' statuses, and exits non-zero itself after a SIGTERM.
    """
    from megatron_cpt.train.progress_log import read_starts

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nprocs}", "--no-python", sys.executable, "-m", module, *args]
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: keep the cores busy on CPU.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    starts_before = len(read_starts(run_dir)) if run_dir else 0
    torchrun = subprocess.Popen(command, env=env)
    forwarded = []

    def forward_once(signum, _frame):
        if not forwarded:
            forwarded.append(signum)
            torchrun.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward_once)
    try:
        status = torchrun.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if run_dir:
        starts = read_starts(run_dir)
        if len(starts) > starts_before and starts[-1].ended in ("preempted", "time_limit"):
            from megatron_cpt.train.preemption import EXIT_RESUMABLE

            return EXIT_RESUMABLE
    return status
