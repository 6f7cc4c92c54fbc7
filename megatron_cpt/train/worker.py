"""One rank of a training job: ``python -m megatron_cpt.train.worker RECIPE [KEY=VALUE ...]``.

Exit status: 0 when the run finished, 3 on a non-finite loss, 75 (``EXIT_RESUMABLE``) when it
stopped early with a checkpoint (SIGTERM or ``train.time_limit_minutes``). Under torchrun a
resumable stop exits 0 instead, since torchrun reports any non-zero rank as a failure and does not
pass the status on; ``megatron-cpt train`` reads ``RUN_DIR/progress.jsonl``. Inside a Slurm job the
rank that keeps that file also decides whether the job requeues itself (``launch/requeue.py``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from megatron_cpt.config.recipe import Recipe, load_recipe
from megatron_cpt.files import write_atomic

if TYPE_CHECKING:
    from megatron_cpt.train.preemption import StopRequests


def train_this_rank(recipe: Recipe, stops: Optional["StopRequests"] = None) -> int:
    """Train as this rank; ``stops``: a stop-signal handler installed earlier (else now)."""
    import torch.distributed as dist

    from megatron_cpt.launch.local import error_prefix
    from megatron_cpt.runtime.parallel import destroy_parallel
    from megatron_cpt.train.loop import NonFiniteLossError, run_training
    from megatron_cpt.train.preemption import EXIT_RESUMABLE, StopRequests
    from megatron_cpt.train.state import is_logging_rank

    if stops is None:
        stops = StopRequests()
        stops.install()
    stops.set_time_limit(recipe.train.time_limit_minutes, recipe.train.stop_grace_minutes)

    run_dir = Path(recipe.logging.run_dir)
    try:
        outcome = run_training(recipe, stops)
    except NonFiniteLossError as exc:
        if dist.get_rank() == 0:  # every rank knows the loss: one line for the job
            print(f"{error_prefix('train')}: error: {exc}", file=sys.stderr, flush=True)
        return 3
    if dist.get_rank() == 0:
        write_atomic(run_dir / "recipe.resolved.json", json.dumps(recipe.to_dict(), indent=2))
    if is_logging_rank():  # the rank that printed the steps: the last lines come after them
        loss = "" if math.isnan(outcome.last_loss) else f", loss {outcome.last_loss:.4f}"
        print(f"[megatron-cpt] {outcome.stop_reason.label}: step {outcome.last_step}{loss}, "
              f"run dir {run_dir}, checkpoint {outcome.checkpoint}", flush=True)
        if outcome.message:
            print(f"megatron-cpt train: stopped: {outcome.message}", flush=True)
    if is_logging_rank() and "SLURM_JOB_ID" in os.environ:
        from megatron_cpt.launch.requeue import request_requeue_if_due

        request_requeue_if_due(run_dir)
    # No rank leaves before progress.jsonl's end line (and the requeue request) is written: a
    # launcher that sees one rank or node exit (srun --kill-on-bad-exit, torchrun after SIGTERM)
    # may kill the others.
    dist.barrier()
    destroy_parallel()
    if outcome.stop_reason.resumable and "TORCHELASTIC_RUN_ID" not in os.environ:
        return EXIT_RESUMABLE
    return 0


def main(argv: list[str]) -> int:
    from megatron_cpt.launch.environment import adopt_slurm_rank_environment
    from megatron_cpt.launch.failures import EXIT_FAILED
    from megatron_cpt.launch.local import report_failure, run_rank
    from megatron_cpt.train.preemption import StopRequests

    stops = StopRequests()
    stops.install()  # before anything slow: Slurm's warning may come while the rank starts
    adopt_slurm_rank_environment()
    rank = os.environ.get("RANK", "0")
    stops.on_stuck = lambda message: report_failure("train", f"rank {rank}: {message}",
                                                    EXIT_FAILED)
    return run_rank(lambda: train_this_rank(load_recipe(argv[0], argv[1:]), stops), "train")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
