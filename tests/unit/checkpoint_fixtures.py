"""A checkpoint directory that passes the checks made before a run starts (its index, shard files
and ``megatron_cpt.json`` model fields; ``checkpointing/start_checks.check_checkpoints_before_start``) without
holding a model: for tests that stop before any rank loads it."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch


def write_checkpoint_stub(directory: Path, model) -> Path:
    """``model``: the recipe's ModelConfig, recorded as the one that wrote the checkpoint."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"stub": torch.zeros(2)}, checkpoint_id=str(directory), no_dist=True)
    (directory / "metadata.json").write_text("{}")
    (directory / "megatron_cpt.json").write_text(json.dumps(
        {"kind": "stub", "model": dataclasses.asdict(model)}))
    return directory
