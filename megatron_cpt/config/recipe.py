"""Recipe: one config dataclass per component, loaded from YAML plus dotted overrides.

    recipe = load_recipe("examples/llama3_tiny_cpt_2xcpu.yaml", ["parallel.tp=2", "train.steps=20"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megatron_cpt.config.checkpoint import CheckpointConfig
from megatron_cpt.config.data import DataConfig
from megatron_cpt.config.eval import EvalConfig
from megatron_cpt.config.launch import LaunchConfig
from megatron_cpt.config.loader import apply_overrides, build_dataclass, read_yaml, to_dict
from megatron_cpt.config.logs import LoggingConfig
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.optim import OptimConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.config.presets import preset_fields
from megatron_cpt.config.train import TrainConfig
from megatron_cpt.errors import ConfigError


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def data_parallel_size(self) -> int:
        return self.parallel.data_parallel_size(self.launch.world_size)

    def validate(self) -> "Recipe":
        """All checks, once, right after loading; each error names its field."""
        self.model.validate()
        self.launch.validate()
        self.parallel.validate(self.model.num_layers, self.model.num_attention_heads,
                               self.model.num_query_groups)
        dp = self.data_parallel_size
        self.train.validate(dp)
        if self.train.seq_length > self.model.max_position_embeddings:
            raise ConfigError(
                f"train.seq_length: {self.train.seq_length} exceeds "
                f"model.max_position_embeddings {self.model.max_position_embeddings}")
        self._check_sequence_split()
        fp8 = self.model.fp8
        if fp8 is not None and fp8.param_gather and not self.parallel.distributed_optimizer:
            raise ConfigError(
                "model.fp8.param_gather: FP8 parameter all-gather needs the distributed optimizer "
                "(parallel.distributed_optimizer=true)")
        if self.parallel.vpp is not None and self.train.num_microbatches(dp) % self.parallel.pp:
            raise ConfigError(
                f"train.global_batch_size: interleaved pipelining needs the number of micro-batches "
                f"({self.train.num_microbatches(dp)}) to be a multiple of parallel.pp={self.parallel.pp}")
        self.optim.validate(self.train.steps)
        self.data.validate()
        if self.data.chat is not None:
            self.data.chat.validate_run(self.train.micro_batch_size, self.model.attention_backend)
        if self.data.eod_token_id >= self.model.vocab_size or self.data.eod_token_id < 0:
            raise ConfigError(
                f"data.eod_token_id: {self.data.eod_token_id} is outside the vocabulary "
                f"(model.vocab_size={self.model.vocab_size})")
        self.checkpoint.validate()
        self.logging.validate()
        self.eval.validate()
        if (self.eval.max_length or 0) > self.model.max_position_embeddings:
            raise ConfigError(f"eval.max_length: {self.eval.max_length} exceeds "
                              f"model.max_position_embeddings {self.model.max_position_embeddings}")
        if self.logging.trace_steps and self.logging.trace_steps[1] > self.train.steps:
            raise ConfigError(f"logging.trace_steps: step {self.logging.trace_steps[1]} is after "
                              f"the last step (train.steps={self.train.steps})")
        return self

    def _check_sequence_split(self) -> None:
        """Sequence parallelism gives each TP rank 1/TP of the sequence; FP8 GEMMs take token
        counts in multiples of 16, per rank where the sequence is split."""
        seq, tp = self.train.seq_length, self.parallel.tp
        split = self.parallel.sequence_parallel_enabled
        if self.model.fp8 is not None:
            multiple = 16 * (tp if split else 1)
            if seq % multiple:
                raise ConfigError(
                    f"train.seq_length: FP8 (model.fp8) needs a multiple of {multiple} tokens"
                    + (f" (16 per GEMM x parallel.tp={tp} with sequence parallelism)" if split else
                       " (its GEMMs' token dimension)") + f", got {seq}")
        elif split and seq % tp:
            raise ConfigError(
                f"train.seq_length: sequence parallelism splits the sequence over "
                f"parallel.tp={tp} ranks and needs a multiple of {tp}, got {seq}; change it, or "
                f"set parallel.sequence_parallel=false")

    def to_dict(self) -> dict:
        return to_dict(self)


def recipe_from_dict(tree: dict) -> Recipe:
    tree = dict(tree)
    model = tree.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("model: expected a mapping")
    if model.get("preset"):
        tree["model"] = {**preset_fields(model["preset"]), **model}
    chat = (tree.get("data") or {}).get("chat") if isinstance(tree.get("data"), dict) else None
    if isinstance(chat, dict) and chat.get("epochs") is not None and "steps" in (
            tree.get("train") or {}):
        raise ConfigError("train.steps: data.chat.epochs sets the number of steps; give one of "
                          "the two")
    return build_dataclass(Recipe, tree)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override, type-check and validate a recipe. Raises ConfigError naming the field."""
    tree = apply_overrides(read_yaml(path), list(overrides))
    return recipe_from_dict(tree).validate()
