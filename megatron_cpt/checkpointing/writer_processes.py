"""megatron-core's checkpoint writer processes, made to survive the stop signal.

A torch_dist save (blocking or in the background) runs through megatron-core's
``FileSystemWriterAsync``, which uses helper processes:

- a ``multiprocessing`` Manager server, started at a rank's first save and kept for the rest of
  the process; it holds the queue the writers report their results to;
- one process forked per file it writes, and for a background save one forked process around them.

A stop signal reaches all of them, not just the rank: torchrun signals each rank's whole process
group, and Slurm's ``scancel`` signals every process of the job step. Left as they are, SIGTERM
killed the Manager; the next save's result then went to a dead queue (``BrokenPipeError``) and the
stop save failed whenever an interval save had come before it.

``keep_writers_through_stop_signals`` (every rank, before its first save) makes the helpers ignore
the stop signals and die with the process that started them instead (``process_lifetime``):

- it starts that Manager itself, with the stop signals blocked across its start and ignored from
  the server's first instruction, and gives megatron-core its queue;
- it registers an at-fork hook, so every process forked from the rank (the writers) ignores the
  stop signals too.

The Manager is forked from the rank, like the writers, where megatron-core would spawn a fresh
interpreter: the server unpickles the writers' results (torch's ``WriteResult``), and a fresh
interpreter first imports ``torch.distributed.checkpoint`` for that, about 2 s of CPU per rank at
its first save. The server touches no device and only serves the queue.

The rank itself still receives the signal and stops at the next step boundary
(``megatron_cpt.train.preemption``); a writer killed by SIGKILL or a crash leaves only the
``.tmp`` directory, as before.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing.managers import SyncManager

from megatron_cpt.process_lifetime import STOP_SIGNALS, die_with_parent, ignore_stop_signals

_installed_in_pid: int | None = None
_manager: SyncManager | None = None


def _become_writer_helper(parent_pid: int) -> None:
    ignore_stop_signals()
    die_with_parent(parent_pid)


def _after_fork_in_child() -> None:
    if _installed_in_pid is not None:
        _become_writer_helper(os.getppid())


def keep_writers_through_stop_signals() -> None:
    """Idempotent per process; see the module docstring."""
    global _installed_in_pid, _manager
    if _installed_in_pid == os.getpid():
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    manager = SyncManager(ctx=mp.get_context("fork"))
    # Blocked here, the signals stay blocked in the server (the mask survives fork) until its
    # initializer ignores them: a signal during its start-up cannot kill it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        manager.start(initializer=_become_writer_helper, initargs=(os.getpid(),))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    # megatron-core creates this queue lazily from a Manager of its own; one made here comes first.
    filesystem_async._results_queue = manager.Queue()
    _manager = manager
    if _installed_in_pid is None:
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _installed_in_pid = os.getpid()
