"""CheckpointConfig: initial weights (a converted checkpoint) and resume (our own) kept apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_cpt.errors import ConfigError


@dataclass
class CheckpointConfig:
    # Where this run saves and resumes from; None = RUN_DIR/checkpoints.
    dir: Optional[str] = None
    # Initial weights only (model tensors; no optimizer, scheduler or data position).
    pretrained: Optional[str] = None
    save_interval: int = 0
    # Resume from the newest complete checkpoint in `dir` when there is one.
    resume: bool = True
    # Keep at most this many checkpoints (0 = keep all).
    keep_last: int = 0
    save_at_end: bool = True
    # Write the shards of interval saves in a background process while training goes on
    # (megatron-core's asynchronous torch_dist writer); the checkpoint is renamed into place and
    # named in `latest` once every rank has finished. Saves made when the run stops stay blocking.
    async_save: bool = False
    # The distributed optimizer's state in megatron-core's fully_reshardable layout: it loads at
    # any TP/PP/VPP/DP, but every save gathers the data-parallel group's state on one rank's host
    # memory. Off (default): dp_reshardable, each rank writes its own shard in parallel, and the
    # checkpoint loads at the same TP/PP/VPP with any DP. Turn it on for the save a layout change
    # resumes from (docs/TRAINING.md, "Checkpoints").
    reshardable: bool = False

    def validate(self) -> None:
        if self.save_interval < 0:
            raise ConfigError(f"checkpoint.save_interval: must be >= 0, got {self.save_interval}")
        if self.keep_last < 0:
            raise ConfigError(f"checkpoint.keep_last: must be >= 0, got {self.keep_last}")
        if self.pretrained is not None and self.dir is not None and self.pretrained == self.dir:
            raise ConfigError(
                "checkpoint.pretrained: must differ from checkpoint.dir (initial weights are "
                "read-only; checkpoint.dir is where this run resumes)")
