"""Whether a Slurm job should requeue itself after its training step ended.

The rank that keeps ``RUN_DIR/progress.jsonl`` decides when the run stops inside a Slurm job
(``request_requeue_if_due``) and, if so, writes ``RUN_DIR/requeue.request``; the batch script
removes that file before the step and requeues the job when it is there afterwards. The decision is
taken where the training ran (inside the container, when there is one), so the batch shell on the
host needs neither Python nor this package.

Only a run whose last start stopped early with a checkpoint (``preempted`` or ``time_limit``),
made progress during that start and beyond every earlier start, and has steps left is requeued. A
finished run, a failure (which would recur), a start that trained no step, or one that only
repeated steps an earlier start had reached (e.g. ``checkpoint.resume: false``) is not.

    python -m megatron_cpt.launch.requeue RUN_DIR    # prints the decision; exit 0: requeue, 1: not
"""

from __future__ import annotations

import sys
from pathlib import Path

from megatron_cpt.files import write_atomic
from megatron_cpt.train.progress_log import read_starts

REQUEST_FILE = "requeue.request"


def requeue_decision(run_dir: str | Path) -> tuple[bool, str]:
    starts = read_starts(run_dir)
    if not starts:
        return False, "no start recorded in progress.jsonl"
    last, n = starts[-1], len(starts)
    if last.ended is None:
        return False, f"start {n} ended without a record (killed or crashed)"
    if not last.resumable:
        return False, f"start {n} ended '{last.ended}'"
    if not last.made_progress:
        return False, f"start {n} trained no step (first step {last.first_step})"
    reached_before = max((s.last_step for s in starts[:-1] if s.last_step is not None), default=0)
    if last.last_step <= reached_before:
        return False, (f"start {n} stopped at step {last.last_step}, no further than an earlier "
                       f"start (step {reached_before}): it did not resume")
    if last.last_step >= last.final_step:
        return False, f"step {last.last_step} is the final step"
    return True, (f"start {n} stopped ({last.ended}) after step {last.last_step} of "
                  f"{last.final_step} with checkpoint {last.checkpoint}")


def request_requeue_if_due(run_dir: str | Path) -> bool:
    """Write ``RUN_DIR/requeue.request`` when the run should be requeued; says why either way."""
    requeue, reason = requeue_decision(run_dir)
    print(f"megatron-cpt: {'requeue' if requeue else 'no requeue'}: {reason}", flush=True)
    if requeue:
        write_atomic(Path(run_dir) / REQUEST_FILE, reason + "\n")
    return requeue


def main(argv: list[str]) -> int:
    requeue, reason = requeue_decision(argv[0])
    print(f"megatron-cpt: {'requeue' if requeue else 'no requeue'}: {reason}", flush=True)
    return 0 if requeue else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
