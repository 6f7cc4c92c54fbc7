"""Stopping a run early with a checkpoint: on SIGTERM, or when the recipe's wall-clock budget
(``train.time_limit_minutes``) would run out before the next step and its save could finish.

The signal handler only sets a flag; nothing is saved inside it. At every step boundary all ranks
agree (one all-reduce of a small integer, MAX over the world), so every rank stops after the same
step and takes part in the same checkpoint. Further SIGTERMs while stopping or saving are logged
and otherwise ignored, so a second signal cannot cut a checkpoint write short.

A run that stopped this way exits with ``EXIT_RESUMABLE`` (75, ``EX_TEMPFAIL`` in sysexits.h:
"try again later"); resuming it continues from the saved step.

A rank asked to stop must still reach that step boundary. One blocked in a collective whose peer is
gone never would (a blocked C call does not even run Python's signal handler), so the signal is
also seen through ``signal.set_wakeup_fd`` by a watchdog thread: a rank that has not reached a
boundary ``train.stop_grace_minutes`` after the signal (or three of its longest steps, if longer)
reports so in one line and exits with ``EXIT_FAILED`` without a checkpoint; the run resumes from
its newest whole one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from enum import IntEnum
from typing import Callable, Optional

from megatron_cpt.launch.failures import EXIT_FAILED
from megatron_cpt.process_lifetime import unblock_sigterm

EXIT_RESUMABLE = 75


class StopReason(IntEnum):
    """Why a run ends; ordered so that the all-reduced maximum is the one every rank reports."""

    NONE = 0
    FINISHED = 1  # reached train.steps (or train.stop_at_step)
    TIME_LIMIT = 2  # train.time_limit_minutes would be exceeded by another step and a save
    SIGNAL = 3  # SIGTERM (Slurm preemption, the time-limit warning, or a user)
    NO_SPACE = 4  # the next checkpoint would not fit on its file system (decided at a save)

    @property
    def resumable(self) -> bool:
        return self in (StopReason.TIME_LIMIT, StopReason.SIGNAL, StopReason.NO_SPACE)

    @property
    def saves(self) -> bool:
        """Whether stopping for this reason writes a checkpoint."""
        return self in (StopReason.TIME_LIMIT, StopReason.SIGNAL)

    @property
    def label(self) -> str:
        return {StopReason.FINISHED: "finished", StopReason.TIME_LIMIT: "time_limit",
                StopReason.SIGNAL: "preempted", StopReason.NO_SPACE: "no_space"}.get(self, "running")


class StopRequests:
    """Collects stop requests on this rank: SIGTERM (handler installed by ``install``) and the
    wall-clock budget; ``agree`` turns them into one decision shared by all ranks."""

    def __init__(self, time_limit_minutes: float | None = None, started_at: float | None = None):
        self.started_at = time.monotonic() if started_at is None else started_at
        self.budget_s = None
        self.set_time_limit(time_limit_minutes)
        self.signal_name: str | None = None
        self._stopping = False
        self.grace_s = 600.0
        self.longest_step_s = 0.0
        self._at_boundary = threading.Event()
        self.on_stuck: Optional[Callable[[str], None]] = None

    def set_time_limit(self, minutes: float | None, grace_minutes: float | None = None) -> None:
        """The wall-clock budget of this start, counted from when this object was made, and how
        long a rank asked to stop may take to reach a step boundary."""
        self.budget_s = minutes * 60 if minutes else None
        if grace_minutes is not None:
            self.grace_s = grace_minutes * 60

    def install(self) -> None:
        """Installed first thing in every rank (``train.worker``), before the heavy imports and
        set-up: a stop signal during set-up is kept, and the run stops after its first step.
        One sent before (the ranks of a local launch start with SIGTERM blocked) arrives here."""
        signal.signal(signal.SIGTERM, self._on_signal)
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_end,), name="stop-watchdog",
                         daemon=True).start()
        unblock_sigterm()  # last: a pending SIGTERM finds the handler and the watchdog in place

    def _watch(self, read_end: int) -> None:
        """Wake on the first stop signal, whatever the main thread is doing, and give it the
        grace period to reach a step boundary."""
        while signal.SIGTERM not in os.read(read_end, 64):
            pass
        grace = max(self.grace_s, 3 * self.longest_step_s)
        if self._at_boundary.wait(grace):
            return
        message = (f"asked to stop {grace:.0f} s ago but still not at a step boundary (blocked "
                   f"in a collective: another rank is gone or stuck); exiting without a "
                   f"checkpoint (train.stop_grace_minutes)")
        if self.on_stuck is not None:
            self.on_stuck(message)
        os._exit(EXIT_FAILED)

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
            self._at_boundary.set()
            return StopReason.FINISHED
        import torch
        import torch.distributed as dist

        self.longest_step_s = max(self.longest_step_s, next_step_s)
        local = self.local_reason(next_step_s)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        flag = torch.tensor([int(local)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reason = StopReason(int(flag.item()))
        if reason != StopReason.NONE:
            self._stopping = True
            self._at_boundary.set()  # what follows (the save) is bounded by collective timeouts
        return reason
