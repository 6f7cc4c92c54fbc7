"""Typed configuration: one dataclass per component, gathered in a Recipe."""

from megatron_cpt.config.checkpoint import CheckpointConfig
from megatron_cpt.config.data import DataConfig
from megatron_cpt.config.launch import LaunchConfig
from megatron_cpt.errors import ConfigError
from megatron_cpt.config.logs import LoggingConfig
from megatron_cpt.config.model import Fp8Config, ModelConfig, RopeScalingConfig
from megatron_cpt.config.optim import OptimConfig, ScheduleConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.config.recipe import Recipe, load_recipe, recipe_from_dict
from megatron_cpt.config.train import TrainConfig

__all__ = [
    "CheckpointConfig", "ConfigError", "DataConfig", "Fp8Config", "LaunchConfig", "LoggingConfig",
    "ModelConfig", "OptimConfig", "ParallelConfig", "Recipe", "RopeScalingConfig", "ScheduleConfig",
    "TrainConfig", "load_recipe", "recipe_from_dict",
]
