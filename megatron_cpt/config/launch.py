"""LaunchConfig: how many processes the job has (nodes x processes per node)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.errors import ConfigError


@dataclass
class LaunchConfig:
    nodes: int = 1
    procs_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def validate(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"launch.nodes: must be >= 1, got {self.nodes}")
        if self.procs_per_node < 1:
            raise ConfigError(f"launch.procs_per_node: must be >= 1, got {self.procs_per_node}")
