"""Failures that are not bugs become one line (launch/failures.py), found however deeply the
checkpoint writer or torch.distributed wrapped them; bugs are not explained away."""

from __future__ import annotations

import errno

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from megatron_cpt.launch.failures import explain_failure


def _wrapped(inner: BaseException) -> BaseException:
    """As a background checkpoint write reports it: a rank's failure inside torch's exception,
    raised while handling another."""
    try:
        try:
            raise RuntimeError("Worker failure") from inner
        except RuntimeError as worker:
            raise CheckpointException("write", {0: (worker, None)})
    except CheckpointException as exc:
        return exc


@pytest.mark.parametrize("error,expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/ckpt/step_000040.tmp"),
     "no space left on device writing '/ckpt/step_000040.tmp'"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/ckpt/x"), "disk quota exceeded writing '/ckpt/x'"),
    (OSError(errno.EROFS, "Read-only file system", "/ckpt/step_000004.tmp"),
     "cannot write '/ckpt/step_000004.tmp': read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/a"),
     "cannot write '/runs/a': permission denied"),
    (MemoryError(), "out of host memory"),
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                  "[127.0.0.1]:53123"), "lost another rank during a collective"),
])
def test_the_cause_is_found_through_the_wrapping(error, expected):
    assert expected in explain_failure(error)
    assert expected in explain_failure(_wrapped(error))


def test_gpu_out_of_memory():
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert explain_failure(error) == ("out of GPU memory (CUDA out of memory. Tried to allocate "
                                      "2.00 GiB)")


@pytest.mark.parametrize("bug", [ValueError("shapes do not match"), KeyError("decoder.final"),
                                 RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                                 _wrapped(IndexError("list index out of range"))])
def test_bugs_keep_their_traceback(bug):
    assert explain_failure(bug) is None
