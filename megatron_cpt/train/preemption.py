"""Stopping a run early with a checkpoint: on SIGTERM, or when the recipe's wall-clock budget
(``train.time_limit_minutes``) would run out before the next step and its save could finish.

The signal handler only sets a flag; nothing is saved inside it. At every step boundary all ranks
agree (one all-reduce of a small integer, MAX over the world), so every rank stops after the same
step and takes part in the same checkpoint. Further SIGTERMs while stopping or saving are logged
and otherwise ignored, so a second signal cannot cut a checkpoint write short.

A run that stopped this way exits with ``EXIT_RESUMABLE`` (75, ``EX_TEMPFAIL`` in sysexits.h:
"try again later"); resuming it continues from the saved step.
"""

from __future__ import annotations

import signal
import time
from enum import IntEnum

EXIT_RESUMABLE = 75


class StopReason(IntEnum):
    """Why a run ends; ordered so that the all-reduced maximum is the one every rank reports."""

    NONE = 0
    FINISHED = 1  # reached train.steps (or train.stop_at_step)
    TIME_LIMIT = 2  # train.time_limit_minutes would be exceeded by another step and a save
    SIGNAL = 3  # SIGTERM (Slurm preemption, the time-limit warning, or a user)

    @property
    def resumable(self) -> bool:
        return self in (StopReason.TIME_LIMIT, StopReason.SIGNAL)

    @property
    def label(self) -> str:
        return {StopReason.FINISHED: "finished", StopReason.TIME_LIMIT: "time_limit",
                StopReason.SIGNAL: "preempted"}.get(self, "running")


class StopRequests:
    """Collects stop requests on this rank: SIGTERM (handler installed by ``install``) and the
    wall-clock budget; ``agree`` turns them into one decision shared by all ranks."""

    def __init__(self, time_limit_minutes: float | None = None, started_at: float | None = None):
        self.started_at = time.monotonic() if started_at is None else started_at
        self.budget_s = None
        self.set_time_limit(time_limit_minutes)
        self.signal_name: str | None = None
        self._stopping = False

    def set_time_limit(self, minutes: float | None) -> None:
        """The wall-clock budget of this start, counted from when this object was made."""
        self.budget_s = minutes * 60 if minutes else None

    def install(self) -> None:
        """Installed first thing in every rank (``train.worker``), before the heavy imports and
        set-up: a stop signal during set-up is kept, and the run stops after its first step."""
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None and not self._stopping:
            print(f"[megatron-cpt] {name} received: saving a checkpoint after this step, then "
                  f"exiting with status {EXIT_RESUMABLE}", flush=True)
        else:
            print(f"[megatron-cpt] {name} received again: still stopping; the checkpoint is "
                  f"being written and will not be interrupted", flush=True)
        self.signal_name = self.signal_name or name

    def local_reason(self, next_step_s: float) -> StopReason:
        """What this rank asks for; ``next_step_s`` is how long another step plus a save takes."""
        if self.signal_name is not None:
            return StopReason.SIGNAL
        if self.budget_s is not None:
            if time.monotonic() - self.started_at + next_step_s >= self.budget_s:
                return StopReason.TIME_LIMIT
        return StopReason.NONE

    def agree(self, finished: bool, next_step_s: float) -> StopReason:
        """Collective: the same reason on every rank (the largest any rank asked for).

        ``finished`` is the same on every rank (the step counter), so a run at its last step ends
        as finished, even if a signal arrived during that step, without a collective."""
        if finished:
            self._stopping = True
            return StopReason.FINISHED
        import torch
        import torch.distributed as dist

        local = self.local_reason(next_step_s)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        flag = torch.tensor([int(local)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reason = StopReason(int(flag.item()))
        if reason != StopReason.NONE:
            self._stopping = True
        return reason
