"""The files a training run leaves in its run directory, and their one reader each.

    RUN_DIR/metrics.jsonl     one record per step (``read_metrics``), written by train/metrics.py
    RUN_DIR/progress.jsonl    each start of the run, how it ended, and each requeue decision
    RUN_DIR/requeue.request   present when the Slurm job should requeue itself (launch/requeue.py)

``progress.jsonl`` lines:

    {"event": "start", "restart_count": 1, "job_id": "4711", "first_step": 6, "final_step": 20,
     "cpu_threads": 1}
    {"event": "end", "last_step": 20, "ended": "finished", "checkpoint": ".../step_000020"}
    {"event": "requeue", "restart_count": 1, "job_id": "4711", "requeue": false, "progress": true,
     "checkpoint_step": 20, "reason": "..."}

``ended`` is ``finished``, ``preempted`` (SIGTERM), ``time_limit`` (``train.time_limit_minutes``),
``nonfinite`` or ``failed``; a start without an end line was killed. A ``requeue`` line is written
once per start of a Slurm job, by the training step when the run stopped cleanly, otherwise by the
batch script after it. ``megatron-cpt train`` derives its exit status from the end lines, because
torchrun does not pass its ranks' exit statuses on. One rank writes (appended, flushed and fsynced
line by line). Train, launch, profile and almr read these files through this module only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_cpt.errors import UserError

METRICS_FILE = "metrics.jsonl"
PROGRESS_FILE = "progress.jsonl"
REQUEUE_REQUEST_FILE = "requeue.request"
# Validation loss of each language (sources weighted by their training tokens), and the same per
# validation batch, a list (what the ALMR fit's bootstrap resamples; jsonl only, not TensorBoard).
LANGUAGE_LOSS = "val_loss_by_language/"
LANGUAGE_BATCH_LOSSES = "val_batch_loss_by_language/"
# Benchmark accuracy of each task (megatron_cpt.eval), and 1/0 per item, a list (resampled by the
# ALMR fit when it takes an accuracy as its objective; jsonl only).
ACCURACY = "eval_acc/"
ITEM_CORRECT = "eval_item_correct/"
# Endings after which the run can go on from its newest checkpoint (exit status 75), and those
# after which a Slurm job goes on by itself (not a full disk: space must be freed first).
RESUMABLE_ENDINGS = ("preempted", "time_limit", "no_space")
REQUEUE_ENDINGS = ("preempted", "time_limit")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl``, one per step, in file order."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return records


def blocking_save_times(records: list[dict]) -> list[float]:
    """``checkpoint_save_s`` of the blocking saves: a stop's save always blocks, and a background
    save's record holds only the time to schedule it."""
    return [r["checkpoint_save_s"] for r in records
            if r.get("checkpoint_save_s") is not None and not r.get("checkpoint_background")]


@dataclass(frozen=True)
class RunStart:
    """One start of a run and, when it ended cleanly, how."""

    restart_count: int
    job_id: Optional[str]
    first_step: int  # the first step this start trains (1 for a fresh run)
    final_step: int  # the step it was asked to reach
    last_step: Optional[int]  # the last step it completed; None when it was killed
    ended: Optional[str]  # see the module docstring; None when it was killed
    checkpoint: Optional[str]
    cpu_threads: Optional[int] = None  # each rank's intra-op threads (recorded since it was)

    @property
    def resumable(self) -> bool:
        return self.ended in RESUMABLE_ENDINGS

    @property
    def requeueable(self) -> bool:
        return self.ended in REQUEUE_ENDINGS

    @property
    def made_progress(self) -> bool:
        return self.last_step is not None and self.last_step >= self.first_step


@dataclass(frozen=True)
class RequeueDecision:
    """Whether one start of a Slurm job requeued it, and why."""

    restart_count: int
    job_id: Optional[str]
    requeue: bool
    progress: bool  # the start left a whole checkpoint beyond every earlier one
    checkpoint_step: Optional[int]  # the newest whole checkpoint's step after the start
    reason: str


def slurm_start() -> tuple[int, Optional[str]]:
    """(restart count, job id) of this start of a Slurm job; (0, None) outside Slurm."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0), os.environ.get("SLURM_JOB_ID")


def _append(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / PROGRESS_FILE, "a") as handle:
        handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def record_start(run_dir: str | Path, resumed_step: int, final_step: int,
                 cpu_threads: Optional[int] = None) -> None:
    """``cpu_threads``: each rank's intra-op threads in this start (part of its arithmetic)."""
    restart_count, job_id = slurm_start()
    _append(Path(run_dir), {"event": "start", "restart_count": restart_count, "job_id": job_id,
                            "first_step": resumed_step + 1, "final_step": final_step,
                            "cpu_threads": cpu_threads})


def record_end(run_dir: str | Path, last_step: int, ended: str, checkpoint: str | None) -> None:
    _append(Path(run_dir), {"event": "end", "last_step": last_step, "ended": ended,
                            "checkpoint": checkpoint})


def record_requeue_decision(run_dir: str | Path, decision: RequeueDecision) -> None:
    _append(Path(run_dir), {"event": "requeue", "restart_count": decision.restart_count,
                            "job_id": decision.job_id, "requeue": decision.requeue,
                            "progress": decision.progress,
                            "checkpoint_step": decision.checkpoint_step,
                            "reason": decision.reason})


def _progress_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_starts(run_dir: str | Path) -> list[RunStart]:
    """Every start recorded in ``RUN_DIR/progress.jsonl``, oldest first ([] if there is none)."""
    starts: list[dict] = []
    for record in _progress_records(run_dir):
        if record.get("event") == "start":
            starts.append({**record, "end": None})
        elif record.get("event") == "end" and starts and starts[-1]["end"] is None:
            starts[-1]["end"] = record
    return [RunStart(restart_count=s["restart_count"], job_id=s.get("job_id"),
                     first_step=s["first_step"], final_step=s["final_step"],
                     last_step=(s["end"] or {}).get("last_step"),
                     ended=(s["end"] or {}).get("ended"),
                     checkpoint=(s["end"] or {}).get("checkpoint"),
                     cpu_threads=s.get("cpu_threads")) for s in starts]


def read_requeue_decisions(run_dir: str | Path) -> list[RequeueDecision]:
    """Every requeue decision in ``RUN_DIR/progress.jsonl``, oldest first."""
    return [RequeueDecision(restart_count=r["restart_count"], job_id=r.get("job_id"),
                            requeue=r["requeue"], progress=r["progress"],
                            checkpoint_step=r.get("checkpoint_step"), reason=r["reason"])
            for r in _progress_records(run_dir) if r.get("event") == "requeue"]
