"""Check a recipe's layout against a Slurm allocation before anything is written or submitted."""

from __future__ import annotations

import copy

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.errors import ConfigError


def fit_to_allocation(recipe: Recipe, nodes: int, gpus_per_node: int) -> Recipe:
    """The recipe with ``launch.nodes`` / ``launch.procs_per_node`` set to the allocation,
    validated again: nodes x GPUs must be a whole number of TP x PP x CP replicas, the global
    batch must divide over micro-batches x DP, and interleaving must fit. Errors name the field
    and the allocation."""
    where = f"--nodes {nodes} x --gpus-per-node {gpus_per_node}"
    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    p = recipe.parallel
    ranks = nodes * gpus_per_node
    replica = p.model_parallel_size
    if ranks % replica:
        raise ConfigError(
            f"parallel.tp: {where} = {ranks} GPUs do not hold a whole number of model replicas of "
            f"tp x pp x cp = {p.tp} x {p.pp} x {p.cp} = {replica} GPUs")
    fitted = copy.deepcopy(recipe)
    fitted.launch.nodes, fitted.launch.procs_per_node = nodes, gpus_per_node
    try:
        return fitted.validate()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (allocation {where}, DP {ranks // replica})") from None
