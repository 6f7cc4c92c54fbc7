"""ParallelConfig: how one model replica is split (TP x PP x CP), and DP over the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_cpt.errors import ConfigError


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    # Virtual pipeline stages per rank (interleaved 1F1B); None = plain 1F1B.
    vpp: Optional[int] = None
    # Context parallelism: refused above 1 (it needs Transformer Engine's attention, not wired up).
    cp: int = 1
    # None = on whenever tp > 1 (every spec supports it); false turns it off.
    sequence_parallel: Optional[bool] = None
    distributed_optimizer: bool = True
    # Uneven pipeline split: layers on the first / last stage; the rest are spread evenly.
    first_stage_layers: Optional[int] = None
    last_stage_layers: Optional[int] = None
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False

    @property
    def sequence_parallel_enabled(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else self.sequence_parallel

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp

    def data_parallel_size(self, world_size: int) -> int:
        if world_size % self.model_parallel_size:
            raise ConfigError(
                f"parallel.tp: the job's {world_size} ranks (launch.nodes x launch.procs_per_node) "
                f"are not divisible by parallel.tp x pp x cp = {self.tp} x {self.pp} x {self.cp}")
        return world_size // self.model_parallel_size

    def validate(self, num_layers: int, num_heads: int, num_query_groups: int) -> None:
        for name in ("tp", "pp", "cp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name}: must be >= 1, got {getattr(self, name)}")
        if self.cp > 1:
            raise ConfigError(
                f"parallel.cp: context parallelism ({self.cp}) is not supported: megatron-core "
                f"implements it only inside Transformer Engine's attention, which this release "
                f"does not wire up; use parallel.cp=1 and shard long sequences with parallel.tp "
                f"(sequence parallelism is on with tp > 1)")
        if num_heads % self.tp:
            raise ConfigError(f"parallel.tp: {self.tp} does not divide the {num_heads} attention heads")
        if num_query_groups % self.tp:
            raise ConfigError(
                f"parallel.tp: {self.tp} does not divide the {num_query_groups} KV groups")
        if self.vpp is not None:
            if self.vpp < 2:
                raise ConfigError(f"parallel.vpp: must be >= 2 when set, got {self.vpp}")
            if self.pp < 2:
                raise ConfigError("parallel.vpp: virtual pipeline stages need parallel.pp >= 2")
            if self.first_stage_layers is not None or self.last_stage_layers is not None:
                raise ConfigError("parallel.vpp: an uneven pipeline split is not supported with vpp")
        self.stage_layer_counts(num_layers)
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError("parallel.sequence_parallel: needs parallel.tp > 1")

    def stage_layer_counts(self, num_layers: int) -> list[int]:
        """Layers per pipeline stage (per virtual stage when vpp is set), checked against the model."""
        chunks = self.pp * (self.vpp or 1)
        first, last = self.first_stage_layers, self.last_stage_layers
        if first is None and last is None:
            if num_layers % chunks:
                raise ConfigError(
                    f"parallel.pp: {num_layers} layers do not split evenly over {chunks} pipeline "
                    f"stages; set parallel.first_stage_layers / last_stage_layers for an uneven split")
            return [num_layers // chunks] * chunks
        if self.pp < 2:
            raise ConfigError("parallel.first_stage_layers: an uneven split needs parallel.pp >= 2")
        edges = [x for x in (first, last) if x is not None]
        if any(x < 0 for x in edges):
            raise ConfigError("parallel.first_stage_layers/last_stage_layers: must be >= 0")
        middle_stages = self.pp - len(edges)
        rest = num_layers - sum(edges)
        if rest < 0 or (middle_stages and rest % middle_stages) or (not middle_stages and rest):
            raise ConfigError(
                f"parallel.first_stage_layers/last_stage_layers: {first}/{last} leave {rest} layers "
                f"that do not split evenly over the other {middle_stages} stages")
        per_middle = rest // middle_stages if middle_stages else 0
        counts = [per_middle] * self.pp
        if first is not None:
            counts[0] = first
        if last is not None:
            counts[-1] = last
        return counts
