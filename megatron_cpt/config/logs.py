"""LoggingConfig: where a run writes its metrics and how often it prints."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.errors import ConfigError


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    tensorboard: bool = True
    log_interval: int = 1

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("logging.run_dir: must be a non-empty path")
        if self.log_interval <= 0:
            raise ConfigError(f"logging.log_interval: must be positive, got {self.log_interval}")
