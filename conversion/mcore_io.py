"""Reading megatron-core distributed checkpoints one layer at a time, in a single process.

megatron-core stores each layer-stacked tensor with a leading ``num_layers`` axis; asking
``dist_checkpointing.load`` for a ShardedTensor that covers only index ``i`` of that axis reads only
layer ``i``. ``single_rank_session`` provides the one-rank gloo group that ``dist_checkpointing``
needs when the command is not already a rank of a distributed job.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import torch

from megatron_cpt.launch.rank_processes import free_port

_SESSION_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


@contextlib.contextmanager
def single_rank_session() -> Iterator[None]:
    """A one-rank process group (gloo on the CPU) for the duration of the block."""
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    saved = {name: os.environ.get(name) for name in (*_SESSION_ENV, "MASTER_PORT")}
    os.environ.update(_SESSION_ENV, MASTER_PORT=str(free_port()))
    try:
        initialize_parallel(ParallelConfig(), seed=0)
        yield
    finally:
        destroy_parallel()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def read_tensor_metadata(ckpt_dir: str | Path) -> dict:
    """Key -> ShardedTensor without data (global shape and dtype) for every tensor on disk."""
    from megatron.core import dist_checkpointing

    return dict(dist_checkpointing.load_tensors_metadata(str(ckpt_dir)))


def load_global_tensors(ckpt_dir: str | Path, metadata: dict, keys: list[str],
                        layer: Optional[int]) -> dict[str, torch.Tensor]:
    """The whole (unsplit) tensors ``keys``; for layer-stacked keys only layer ``layer``."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_cpt.checkpointing.dist_io import reading_checkpoint

    requests = {}
    for key in keys:
        info = metadata[key]
        shape = tuple(info.global_shape)
        if layer is None:
            requests[key] = ShardedTensor.from_rank_offsets(
                key, torch.empty(shape, dtype=info.dtype), replica_id=0)
        else:
            # One slice of the layer axis, kept as a real axis of size 1 (a prepended axis would
            # take megatron-core's legacy path, which expects every slice to be requested).
            requests[key] = ShardedTensor.from_rank_offsets(
                key, torch.empty((1, *shape[1:]), dtype=info.dtype), (0, layer, shape[0]),
                replica_id=0)
    # Reading one layer of a stacked tensor is a partial access by design: skip the check that the
    # requests of all ranks together cover every tensor.
    with reading_checkpoint(ckpt_dir):
        loaded = dist_checkpointing.load(requests, str(ckpt_dir), validate_access_integrity=False)
    # The result also holds the checkpoint's common state (a training checkpoint's scheduler and
    # progress): keep the requested tensors only.
    return {key: loaded[key][0] if layer is not None else loaded[key] for key in requests}
