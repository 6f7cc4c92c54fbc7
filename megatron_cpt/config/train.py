"""TrainConfig: how long, how big a batch, and what to do about a bad loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_cpt.errors import ConfigError


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_size: int = 8
    micro_batch_size: int = 1
    seq_length: int = 128
    seed: int = 1234
    # What a NaN/inf loss does: stop the run, or skip the update and go on.
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    # After this many consecutive skipped steps the run stops anyway.
    max_skipped_steps: int = 10
    eval_interval: int = 0
    eval_steps: int = 1
    # End this run (with a checkpoint) after this step; the LR schedule still spans `steps`.
    # For allocations shorter than the whole run: the next run resumes from here.
    stop_at_step: Optional[int] = None
    # Wall-clock budget of one start, in minutes: stop with a checkpoint (exit status 75) before
    # another step and its save would exceed it. Measured from the start of training set-up.
    time_limit_minutes: Optional[float] = None
    # After a stop signal, how long a rank may take to reach the next step boundary (at least
    # three of its longest steps); one blocked longer, in a collective whose peer is gone, exits
    # without a checkpoint instead of waiting for the collective timeout.
    stop_grace_minutes: float = 10.0

    def validate(self, data_parallel_size: int) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size", "seq_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: must be positive, got {getattr(self, name)}")
        per_step = self.micro_batch_size * data_parallel_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size: {self.global_batch_size} is not divisible by "
                f"micro_batch_size x DP = {self.micro_batch_size} x {data_parallel_size}")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.steps:
            raise ConfigError(f"train.stop_at_step: must be in [1, train.steps={self.steps}], "
                              f"got {self.stop_at_step}")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            raise ConfigError(f"train.time_limit_minutes: must be positive when set, got "
                              f"{self.time_limit_minutes}")
        if self.stop_grace_minutes <= 0:
            raise ConfigError(f"train.stop_grace_minutes: must be positive, got "
                              f"{self.stop_grace_minutes}")
        if self.eval_interval < 0 or self.eval_steps <= 0:
            raise ConfigError("train.eval_interval / eval_steps: must be >= 0 / > 0")

    def num_microbatches(self, data_parallel_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)
