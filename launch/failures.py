"""Failures of a rank that are not bugs, said in one line: what failed, where, and why.

    explain_failure(exc)  ->  "no space left on device writing '/ckpt/step_000040.tmp/__0_0.distcp'"

The cause is looked for through the whole exception: its chain (``__cause__``, ``__context__``)
and the per-rank failures that ``torch.distributed.checkpoint`` collects, because a checkpoint
writer's error reaches the rank wrapped two or three times. Recognised:

- a full disk or an exceeded quota (``ENOSPC``, ``EDQUOT``);
- a directory or file that cannot be written (``EACCES``, ``EPERM``, ``EROFS``);
- a file that is not there (a data file removed under a running job);
- a lost peer: a collective or a point-to-point transfer failed because another rank or its node
  is gone (gloo's closed connections, NCCL's aborted communicators, store and collective timeouts);
- out of memory: host (``MemoryError``, ``ENOMEM``) and GPU (``torch.OutOfMemoryError``).

Anything else is a bug and keeps its traceback. ``EXIT_FAILED`` is the exit status of such a run:
fix the cause and run the same command again, it resumes from the newest whole checkpoint.
"""

from __future__ import annotations

import errno
import re
from typing import Iterator, Optional

EXIT_FAILED = 4
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_NOT_WRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system"}
_PEER_LOST = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|NCCL communicator was aborted|"
    r"NCCL error|ncclRemoteError|ncclSystemError|Socket Timeout|timed out|Timeout|"
    r"failed to recv|failed to send|Connection refused", re.IGNORECASE)


def _causes(exc: BaseException, seen: Optional[set] = None) -> Iterator[BaseException]:
    """``exc`` and every exception it carries, depth first."""
    seen = set() if seen is None else seen
    if id(exc) in seen:
        return
    seen.add(id(exc))
    yield exc
    carried = [exc.__cause__, exc.__context__]
    failures = getattr(exc, "failures", None)  # torch.distributed.checkpoint's CheckpointException
    if isinstance(failures, dict):
        for failure in failures.values():
            carried.append(failure[0] if isinstance(failure, tuple) else failure)
    carried += [arg for arg in getattr(exc, "args", ()) if isinstance(arg, BaseException)]
    for inner in carried:
        if isinstance(inner, BaseException):
            yield from _causes(inner, seen)


def _where(exc: OSError) -> str:
    return f" writing '{exc.filename}'" if exc.filename else ""


def explain_failure(exc: BaseException) -> Optional[str]:
    """One line for a failure that is not a bug, or None."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return f"{_NO_SPACE[cause.errno]}{_where(cause)}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE:
            target = f"'{cause.filename}'" if cause.filename else "a file"
            return f"cannot write {target}: {_NOT_WRITABLE[cause.errno]}"
    for cause in causes:
        if isinstance(cause, FileNotFoundError):
            target = f"'{cause.filename}'" if cause.filename else "a file it needs"
            return f"{target} is not there (removed or moved while the job ran?)"
    for cause in causes:
        if isinstance(cause, MemoryError) or (isinstance(cause, OSError)
                                              and cause.errno == errno.ENOMEM):
            return "out of host memory"
        if type(cause).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            return f"out of GPU memory ({_first_line(cause)})"
    for cause in causes:
        if _is_distributed(cause) and _PEER_LOST.search(str(cause)):
            return (f"lost another rank during a collective ({_first_line(cause)}): "
                    f"a rank or its node died")
    return None


def _is_distributed(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith("torch") or isinstance(exc, (RuntimeError, ConnectionError))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
