"""LaunchConfig: how many processes the job has, and where they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_cpt.config.loader import ConfigError


@dataclass
class LaunchConfig:
    nodes: int = 1
    procs_per_node: int = 1
    # Slurm settings, used by `megatron-cpt launch`.
    partition: Optional[str] = None
    account: Optional[str] = None
    time: str = "04:00:00"
    container_image: Optional[str] = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def validate(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"launch.nodes: must be >= 1, got {self.nodes}")
        if self.procs_per_node < 1:
            raise ConfigError(f"launch.procs_per_node: must be >= 1, got {self.procs_per_node}")
