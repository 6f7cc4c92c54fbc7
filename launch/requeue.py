"""Whether a Slurm job should requeue itself after its training step ended.

    python -m megatron_cpt.launch.requeue RUN_DIR    # exit 0: requeue; 1: do not

Only a run whose last start stopped early with a checkpoint (``preempted`` or ``time_limit`` in
``RUN_DIR/progress.jsonl``), made progress during that start, and has steps left is requeued. A
finished run, a failure (which would recur), or a start that trained no step is not.
"""

from __future__ import annotations

import sys

from megatron_cpt.train.progress_log import read_starts

RESUMABLE_ENDINGS = ("preempted", "time_limit")


def requeue_decision(run_dir: str) -> tuple[bool, str]:
    starts = read_starts(run_dir)
    if not starts:
        return False, "no start recorded in progress.jsonl"
    last = starts[-1]
    if last.ended is None:
        return False, f"start {len(starts)} ended without a record (killed or crashed)"
    if last.ended not in RESUMABLE_ENDINGS:
        return False, f"start {len(starts)} ended '{last.ended}'"
    if not last.made_progress:
        return False, f"start {len(starts)} trained no step (first step {last.first_step})"
    if last.last_step >= last.final_step:
        return False, f"step {last.last_step} is the final step"
    return True, (f"start {len(starts)} stopped ({last.ended}) after step {last.last_step} of "
                  f"{last.final_step} with checkpoint {last.checkpoint}")


def main(argv: list[str]) -> int:
    requeue, reason = requeue_decision(argv[0])
    print(f"megatron-cpt: {'requeue' if requeue else 'no requeue'}: {reason}", flush=True)
    return 0 if requeue else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
