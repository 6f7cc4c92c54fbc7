"""Conversion is host work: every conversion process runs on the CPU, over gloo, also on a GPU node.

``convert hf-to-mcore``, ``mcore-to-hf`` and ``verify`` read and write whole tensors in host
memory. With the GPUs visible, a GPU node would give them NCCL groups over CPU tensors, a CUDA
model fed CPU tokens, and no more ranks than GPUs (TP x PP of a 70B conversion is often larger).
So each of these commands hides the GPUs from its own process and from the ranks it starts
(``HOST_ENV``); ``torch.cuda.is_available()`` is then false there and the runtime takes its CPU path
(gloo, ``runtime.cpu_emulation``), the same on a laptop and on an H100 node.
"""

from __future__ import annotations

import os

HOST_ENV = {"CUDA_VISIBLE_DEVICES": ""}


def run_on_host() -> None:
    """Hide the GPUs from this process. Call it before anything initialises CUDA."""
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("conversion: CUDA was initialised before the GPUs could be hidden")
    os.environ.update(HOST_ENV)
    if torch.cuda.is_available():  # the CUDA runtime had read the device list already
        raise RuntimeError("conversion: the GPUs could not be hidden from this process")
