"""Whether a Slurm job requeues itself after its training step ended, decided once per start.

The batch script removes ``RUN_DIR/requeue.request`` before the training step and requeues the job
when the file is there afterwards. Who writes it depends on how the step ended:

- **It stopped cleanly** (finished, preempted, time limit, non-finite loss): the rank that keeps
  ``progress.jsonl`` decides inside the step (``request_requeue_if_due``). Requeued only when the
  run stopped early with a checkpoint, made progress during that start and beyond every earlier
  start, and has steps left. A finished run, a non-finite loss (it would recur), a start that
  trained no step or only repeated steps an earlier start had reached (``checkpoint.resume:
  false``) is not.
- **It was killed or crashed** (a node's process killed, a NCCL abort, an exception): no rank is
  left to decide, so the script runs this module as a one-task step in the same container:

      python -m megatron_cpt.launch.requeue RUN_DIR/job.recipe.yaml

  The start is requeued when it left a whole checkpoint newer than any earlier start had (it
  resumes from there, losing at most ``checkpoint.save_interval`` steps); one without progress is
  retried until ``launch.max_starts_without_progress`` starts in a row have made none, so a job
  that fails at once (a file removed after submission) stops instead of looping.

Either way the decision is printed to the job log and recorded in ``progress.jsonl``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from megatron_cpt.checkpointing.run_checkpoints import checkpoint_step, find_resume_checkpoint
from megatron_cpt.files import write_atomic
from megatron_cpt.run_files import (REQUEUE_REQUEST_FILE, RequeueDecision, RunStart,
                                    read_requeue_decisions, read_starts, record_requeue_decision,
                                    slurm_start)


def _went_further(starts: list[RunStart]) -> bool:
    """The last start trained steps beyond every earlier start."""
    last = starts[-1]
    reached_before = max((s.last_step for s in starts[:-1] if s.last_step is not None), default=0)
    return last.made_progress and last.last_step > reached_before


def decide_after_stop(run_dir: str | Path) -> tuple[bool, str]:
    """(requeue, why) for a training step whose last start ended with a record."""
    starts = read_starts(run_dir)
    if not starts:
        return False, "no start recorded in progress.jsonl"
    last = starts[-1]
    # Inside Slurm a start is numbered by the job's restarts, which also counts starts that died
    # before they could record themselves.
    n = last.restart_count + 1 if last.job_id is not None else len(starts)
    if last.ended is None:
        return False, f"start {n} ended without a record (killed or crashed)"
    if not last.requeueable:
        return False, f"start {n} ended '{last.ended}'"
    if not last.made_progress:
        return False, f"start {n} trained no step (first step {last.first_step})"
    if not _went_further(starts):
        reached_before = max(s.last_step for s in starts[:-1] if s.last_step is not None)
        return False, (f"start {n} stopped at step {last.last_step}, no further than an earlier "
                       f"start (step {reached_before}): it did not resume")
    if last.last_step >= last.final_step:
        return False, f"step {last.last_step} is the final step"
    return True, (f"start {n} stopped ({last.ended}) after step {last.last_step} of "
                  f"{last.final_step} with checkpoint {last.checkpoint}")


def _this_start(starts: list[RunStart], restart_count: int,
                job_id: Optional[str]) -> Optional[RunStart]:
    if starts and (starts[-1].restart_count, starts[-1].job_id) == (restart_count, job_id):
        return starts[-1]
    return None  # this start of the job died before training began


def decide_after_failure(run_dir: str | Path, ckpt_dir: str | Path, final_step: int,
                         max_without_progress: int, restart_count: int = 0,
                         job_id: Optional[str] = None) -> RequeueDecision:
    """The decision for a start that ended without deciding itself (killed or crashed)."""
    starts = read_starts(run_dir)
    earlier = read_requeue_decisions(run_dir)
    this = _this_start(starts, restart_count, job_id)
    newest = find_resume_checkpoint(ckpt_dir)
    newest_step = checkpoint_step(newest) if newest is not None else None
    # The furthest any earlier start got (its clean stop, or the checkpoint found after it), and
    # where this one began: only a checkpoint beyond all of them is progress.
    reached = [s.last_step for s in starts if s is not this and s.last_step is not None]
    reached += [d.checkpoint_step for d in earlier if d.checkpoint_step is not None]
    if this is not None:
        reached.append(this.first_step - 1)
    progress = newest_step is not None and newest_step > max(reached, default=0)
    n = restart_count + 1
    if this is None:
        how = f"start {n} ended before training began"
    elif this.ended is None:
        how = f"start {n} ended without a record (killed or crashed)"
    else:
        how = f"start {n} ended '{this.ended}'"

    def decision(requeue: bool, reason: str) -> RequeueDecision:
        return RequeueDecision(restart_count, job_id, requeue, progress, newest_step, reason)

    if this is not None and this.ended is not None and this.ended != "failed":
        return decision(*decide_after_stop(run_dir))
    if progress:
        if newest_step >= final_step:
            return decision(False, f"{how}; its checkpoint step {newest_step} is the final step")
        return decision(True, f"{how}; it saved {newest.name}, beyond step "
                              f"{max(reached, default=0)}: resuming from there")
    in_a_row = 1
    for previous in reversed(earlier):
        if previous.progress:
            break
        in_a_row += 1
    limit = f"launch.max_starts_without_progress={max_without_progress}"
    if in_a_row >= max_without_progress:
        return decision(False, f"{how}: {in_a_row} starts in a row without a new checkpoint "
                               f"({limit}): not requeueing; the error is above in this log")
    return decision(True, f"{how} without a new checkpoint ({in_a_row} in a row of {limit}): "
                          f"trying again")


def _announce(run_dir: Path, decision: RequeueDecision) -> None:
    print(f"megatron-cpt: {'requeue' if decision.requeue else 'no requeue'}: {decision.reason}",
          flush=True)
    record_requeue_decision(run_dir, decision)
    if decision.requeue:
        write_atomic(run_dir / REQUEUE_REQUEST_FILE, decision.reason + "\n")


def request_requeue_if_due(run_dir: str | Path) -> bool:
    """Inside the training step (one rank): decide, say why, write the request when due."""
    restart_count, job_id = slurm_start()
    requeue, reason = decide_after_stop(run_dir)
    starts = read_starts(run_dir)
    progress = bool(starts) and _went_further(starts)
    step = starts[-1].last_step if starts and starts[-1].checkpoint else None
    _announce(Path(run_dir), RequeueDecision(restart_count, job_id, requeue, progress, step, reason))
    return requeue


def main(argv: list[str]) -> int:
    """After a training step that left no decision: decide from what the run saved."""
    from megatron_cpt.checkpointing.run_checkpoints import checkpoint_dir
    from megatron_cpt.config.recipe import load_recipe

    if len(argv) != 1:
        print("usage: python -m megatron_cpt.launch.requeue RUN_DIR/job.recipe.yaml",
              file=sys.stderr)
        return 2
    recipe = load_recipe(argv[0], [])
    run_dir = Path(recipe.logging.run_dir)
    restart_count, job_id = slurm_start()
    if any((d.restart_count, d.job_id) == (restart_count, job_id)
           for d in read_requeue_decisions(run_dir)):
        return 0  # the training step decided and said so
    final_step = recipe.train.stop_at_step or recipe.train.steps
    _announce(run_dir, decide_after_failure(run_dir, checkpoint_dir(recipe), final_step,
                                            recipe.launch.max_starts_without_progress,
                                            restart_count, job_id))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
