"""Run a megatron-cpt worker module on N local processes through torchrun (``--standalone``).

Used by ``megatron-cpt train`` and ``megatron-cpt convert`` when they are not already inside a
distributed job (no ``WORLD_SIZE`` in the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys


def inside_distributed_job() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def run_local(module: str, args: list[str], nprocs: int) -> int:
    """Start ``python -m module args`` on ``nprocs`` ranks; returns the job's exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nprocs}", "--no-python", sys.executable, "-m", module, *args]
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: keep the cores busy on CPU.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.call(command, env=env)
