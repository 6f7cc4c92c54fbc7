"""Write and read megatron-core ``dist_checkpointing`` directories atomically.

A checkpoint directory holds the torch_dist shards plus ``megatron_cpt.json`` (what model and layout
wrote it). It is written under ``<name>.tmp`` and renamed only when every rank has finished, so a
process killed mid-write leaves no directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_cpt.errors import CheckpointError

META_FILE = "megatron_cpt.json"
FORMAT_VERSION = 1


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def model_sharded_state_dict(chunks) -> dict:
    """The model part of a checkpoint: ``model`` (or ``model0``, ``model1``... per virtual stage).

    megatron-core keys every tensor globally (layers stacked along a leading axis), so a checkpoint
    saved with one TP/PP/VPP layout loads into any other.
    """
    modules = [getattr(c, "module", c) for c in chunks]
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(modules)}


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file() and (Path(directory) / "metadata.json").is_file()


def read_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint '{directory}': no such directory")
    if not is_complete(directory):
        raise CheckpointError(
            f"checkpoint '{directory}': incomplete or not a megatron-cpt checkpoint "
            f"(no {META_FILE} or metadata.json)")
    return json.loads((directory / META_FILE).read_text())


def save_dist_checkpoint(sharded_state: dict, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Collective: every rank calls it. Returns the final directory once all ranks are done."""
    from megatron.core import dist_checkpointing

    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(sharded_state, str(tmp))
    _barrier()
    if _rank() == 0:
        meta = {"format_version": FORMAT_VERSION, **meta}
        with open(tmp / META_FILE, "w") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()
    return final


def load_dist_checkpoint(sharded_state: dict, directory: str | Path) -> dict:
    """Collective: load the tensors that ``sharded_state`` asks for, in this rank's layout."""
    from megatron.core import dist_checkpointing

    read_meta(directory)
    return dist_checkpointing.load(sharded_state, str(directory))


def apply_model_state(chunks, loaded: dict) -> None:
    """Copy the model part of a loaded checkpoint (see ``model_sharded_state_dict``) into chunks."""
    modules = [getattr(c, "module", c) for c in chunks]
    for index, module in enumerate(modules):
        key = "model" if len(modules) == 1 else f"model{index}"
        module.load_state_dict(loaded[key], strict=True)


def load_model_weights(chunks, directory: str | Path) -> None:
    """Load model tensors only (initial weights); optimizer state, if present, is ignored."""
    apply_model_state(chunks, load_dist_checkpoint(model_sharded_state_dict(chunks), directory))

