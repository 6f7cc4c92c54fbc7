"""LaunchConfig: how many processes the job has (nodes x processes per node) and how they meet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_cpt.errors import ConfigError


@dataclass
class LaunchConfig:
    nodes: int = 1
    # Ranks per node: GPUs on a GPU node, processes on a CPU node.
    procs_per_node: int = 1
    # What a Slurm job asks for: gpu (--gpus-per-node=procs_per_node) or cpu (no GPUs; ranks on
    # CPU cores over gloo, as in tests and demos). Training itself uses CUDA whenever it exists.
    accelerator: Literal["gpu", "cpu"] = "gpu"
    # Timeout of the process groups' collectives and of the torchrun rendezvous, in minutes.
    dist_timeout_minutes: int = 30
    # Slurm: a start that crashed or was killed is requeued when it left a newer whole checkpoint;
    # one without is retried until this many starts in a row have made no progress.
    max_starts_without_progress: int = 3
    # Intra-op CPU threads of each rank (torch.set_num_threads, exported as OMP_NUM_THREADS). On
    # CPU ranks they are part of the floating-point path (a kernel splits its sums by thread), so
    # a run repeats bit for bit only with the same count. None: the node's CPUs divided by
    # procs_per_node (at least 1), resolved where the ranks start. Each start records the count
    # (progress.jsonl, layout.json); the shell's OMP_NUM_THREADS does not change it.
    cpu_threads: Optional[int] = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def validate(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"launch.nodes: must be >= 1, got {self.nodes}")
        if self.procs_per_node < 1:
            raise ConfigError(f"launch.procs_per_node: must be >= 1, got {self.procs_per_node}")
        if self.dist_timeout_minutes < 1:
            raise ConfigError(
                f"launch.dist_timeout_minutes: must be >= 1, got {self.dist_timeout_minutes}")
        if self.max_starts_without_progress < 1:
            raise ConfigError(f"launch.max_starts_without_progress: must be >= 1, got "
                              f"{self.max_starts_without_progress}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"launch.cpu_threads: must be >= 1 (or unset), got {self.cpu_threads}")
