"""The CPU emulation covers the CUDA stream calls megatron-core makes on its gradient-sync path
(0.19 waits on ``torch.cuda.current_stream()`` in every gradient reduction), in a process of its
own: activation patches ``torch.cuda`` for the whole process."""

from __future__ import annotations

import os
import subprocess
import sys

# megatron-core 0.19's _ParamAndGradBucketGroup.start_grad_sync and finish_grad_sync, in short.
GRADIENT_SYNC_STREAM_CALLS = """
import torch
from megatron_cpt.runtime import cpu_emulation
cpu_emulation.activate()
current_stream = torch.cuda.current_stream()
current_stream.wait_event(None)
current_stream.wait_stream(torch.cuda.current_stream())
torch.cuda.current_stream().synchronize()
print("ok")
"""


def test_current_stream_waits_are_no_ops_on_the_cpu():
    proc = subprocess.run([sys.executable, "-c", GRADIENT_SYNC_STREAM_CALLS], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
