"""How long the processes of a job live: tied to the process that started them.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is the kernel's own guarantee: when the
parent dies, by any signal including SIGKILL, the child gets the signal we chose. It needs no
thread, no polling and no cooperation from the parent, which is why it is used here rather than a
watcher. Its one subtlety: "parent" is the thread that forked the child, so it is only set in
processes started from a process's main thread (all of ours are). Elsewhere (not Linux) these calls
do nothing.

The ranks of a local launch start with SIGTERM blocked (``sigterm_blocked``, inherited through
fork and exec): a SIGTERM sent to a rank before it can stop cleanly waits, pending, until the rank
has its handler and calls ``unblock_sigterm``, instead of killing it or being lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

# The signals that ask a job to stop: torchrun and Slurm send them to every process of a rank.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies; exit at once if the
    parent (``parent_pid``) is already gone, since the kernel would then never send it."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def ignore_stop_signals() -> None:
    """Ignore (and unblock) the stop signals: for helper processes whose work must outlive them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def sigterm_blocked():
    """SIGTERM held back in this thread, and in the threads and processes it starts meanwhile
    (they inherit the mask); one that came in is delivered on leaving."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_sigterm() -> None:
    """Take SIGTERM from now on; one sent while it was blocked arrives now. A rank calls it once
    its SIGTERM handler is in place (or, without one, once it may be killed by it)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
