"""``RUN_DIR/progress.jsonl``: one line when a run starts and one when it ends.

    {"event": "start", "restart_count": 1, "job_id": "4711", "first_step": 6, "final_step": 20, ...}
    {"event": "end", "last_step": 20, "ended": "finished", "checkpoint": ".../step_000020", ...}

``ended`` is ``finished``, ``preempted`` (SIGTERM), ``time_limit`` (``train.time_limit_minutes``),
``nonfinite`` or ``failed``; a start without an end line was killed. The Slurm script reads this
file to decide whether to requeue (``megatron_cpt.launch.requeue``), and ``megatron-cpt train``
derives its exit status from it, because torchrun does not pass its ranks' exit statuses on.
Written by one rank (appended, flushed and fsynced line by line).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROGRESS_FILE = "progress.jsonl"
# Endings after which the run can go on from its checkpoint.
RESUMABLE_ENDINGS = ("preempted", "time_limit")


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

    @property
    def resumable(self) -> bool:
        return self.ended in RESUMABLE_ENDINGS

    @property
    def made_progress(self) -> bool:
        return self.last_step is not None and self.last_step >= self.first_step


def _append(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / PROGRESS_FILE, "a") as handle:
        handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def record_start(run_dir: str | Path, resumed_step: int, final_step: int) -> None:
    _append(Path(run_dir), {
        "event": "start",
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "first_step": resumed_step + 1,
        "final_step": final_step,
    })


def record_end(run_dir: str | Path, last_step: int, ended: str, checkpoint: str | None) -> None:
    _append(Path(run_dir), {"event": "end", "last_step": last_step, "ended": ended,
                            "checkpoint": checkpoint})


def read_starts(run_dir: str | Path) -> list[RunStart]:
    """Every start recorded in ``RUN_DIR/progress.jsonl``, oldest first ([] if there is none)."""
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    starts: list[dict] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("event") == "start":
            starts.append({**record, "end": None})
        elif record.get("event") == "end" and starts and starts[-1]["end"] is None:
            starts[-1]["end"] = record
    return [RunStart(restart_count=s["restart_count"], job_id=s.get("job_id"),
                     first_step=s["first_step"], final_step=s["final_step"],
                     last_step=(s["end"] or {}).get("last_step"),
                     ended=(s["end"] or {}).get("ended"),
                     checkpoint=(s["end"] or {}).get("checkpoint")) for s in starts]
