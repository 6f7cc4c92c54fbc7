"""One node's torchrun of a Slurm job, refused where torchrun would cut a stop save short.

    python -m megatron_cpt.launch.node --nnodes=2 --nproc-per-node=8 ... --module MODULE RECIPE

When the job is preempted or nears its time limit, its ranks get SIGTERM, save a checkpoint and
exit. torchrun passes SIGTERM on and, ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds later, SIGKILLs
the ranks; that variable (which the batch script sets to the warning's lead) exists from torch 2.11,
and older torchrun always waits 30 s: an 8B or 70B save takes longer. The batch script runs this
module in the job's own environment (its container image included), so it checks the torch that
will run the ranks; with an older one it exits with status 2 and one line before any rank starts.
``megatron-cpt launch slurm`` picks one task per GPU instead (no torchrun) whenever it cannot tell
that the job's torch is new enough.
"""

from __future__ import annotations

import re
import sys

# The first torch whose torchrun honours TORCH_ELASTIC_SHUTDOWN_TIMEOUT.
TORCHRUN_GRACE_TORCH = (2, 11)


def torchrun_waits_for_saves(torch_version: str) -> bool:
    """Whether this torch's torchrun waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT after SIGTERM (NGC's
    ``2.9.0a0+50eac811a6.nv25.09`` counts as 2.9)."""
    match = re.match(r"(\d+)\.(\d+)", torch_version)
    return bool(match) and (int(match[1]), int(match[2])) >= TORCHRUN_GRACE_TORCH


def main(argv: list[str] | None = None) -> int:
    import torch

    if not torchrun_waits_for_saves(torch.__version__):
        from megatron_cpt.launch.local import error_prefix

        print(f"{error_prefix('torchrun')}: error: torch {torch.__version__} in this job: its torchrun "
              f"would SIGKILL the ranks 30 s after SIGTERM, in the middle of the stop save "
              f"(TORCH_ELASTIC_SHUTDOWN_TIMEOUT needs torch >= 2.11); submit with --tasks per-gpu",
              file=sys.stderr, flush=True)
        return 2
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
