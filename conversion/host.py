"""Conversion is host work: every conversion process runs on the CPU, over gloo, also on a GPU node.

``convert hf-to-mcore``, ``mcore-to-hf`` and ``verify`` read and write whole tensors in host
memory. With the GPUs visible, a GPU node would give them NCCL groups over CPU tensors, a CUDA
model fed CPU tokens, and no more ranks than GPUs (TP x PP of a 70B conversion is often larger).
So each of these commands hides the GPUs from its own process and from the ranks it starts
(``HOST_ENV``); ``torch.cuda.is_available()`` is then false there and the runtime takes its CPU path
(gloo, ``runtime.cpu_emulation``), the same on a laptop and on an H100 node.

For the same reason the model they build is megatron-core's local layers with SDPA and without
FP8 (``host_model_config``), whatever the recipe or checkpoint asks for and whatever is installed:
Transformer Engine's layers assert ``torch.cuda.is_available()`` in their constructors, so the
``auto`` backend would fail in the Dockerfile's image, which has TE. Both specs store their
tensors under the same keys (``conversion/llama.py``), so what conversion writes loads into
either.
"""

from __future__ import annotations

import dataclasses
import os

from megatron_cpt.config.model import ModelConfig

HOST_ENV = {"CUDA_VISIBLE_DEVICES": ""}


def host_model_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` as conversion builds it on CPU ranks: local layers with SDPA, no FP8, no recompute."""
    return dataclasses.replace(cfg, attention_backend="sdpa", fp8=None, recompute="none")


def run_on_host() -> None:
    """Hide the GPUs from this process. Call it before anything initialises CUDA."""
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("conversion: CUDA was initialised before the GPUs could be hidden")
    os.environ.update(HOST_ENV)
    if torch.cuda.is_available():  # the CUDA runtime had read the device list already
        raise RuntimeError("conversion: the GPUs could not be hidden from this process")
