"""LoggingConfig: where a run writes its metrics, how often it prints, and what it measures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_cpt.errors import ConfigError


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    tensorboard: bool = True
    log_interval: int = 1
    detail_interval: int = 10
    """Every N steps: per-micro-batch compute timers (the measured pipeline bubble) and every
    rank's step time (stragglers). They synchronise the GPU per micro-batch; 0 = never."""
    trace_steps: Optional[list[int]] = None
    """[A, B]: a torch.profiler trace of steps A to B on every rank, in RUN_DIR/trace/."""

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("logging.run_dir: must be a non-empty path")
        if self.log_interval <= 0:
            raise ConfigError(f"logging.log_interval: must be positive, got {self.log_interval}")
        if self.detail_interval < 0:
            raise ConfigError(f"logging.detail_interval: must be >= 0, got {self.detail_interval}")
        steps = self.trace_steps
        if steps is not None and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise ConfigError(f"logging.trace_steps: expected [A, B] with 1 <= A <= B, got {steps}")
