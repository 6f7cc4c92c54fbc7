"""Starting a recipe's ranks, shared by ``megatron-cpt train`` and ``megatron-cpt almr reference``:
everything that can be checked is checked before any rank starts or anything is written; then
this process is the rank (inside a distributed job: torchrun set ``RANK``/``WORLD_SIZE``) or it
starts ``launch.procs_per_node`` local ranks of the worker module (``launch/local.py``).

    recipe = load_recipe("examples/llama3_tiny_cpt_2xcpu.yaml", ["train.steps=20"])
    start_ranks(recipe, "megatron_cpt.train.worker", [...], lambda: train_this_rank(recipe),
                several_nodes="submit a Slurm job")
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.errors import UserError


def check_inputs(recipe: Recipe) -> None:
    """The data files (present, non-empty, ids within the model's vocabulary), the benchmark
    tasks and their tokenizer, and the initial weights, or the checkpoint the run would resume
    from (present, whole, of this model, and loadable in this layout)."""
    from megatron_cpt.data.chat_dataset import with_planned_steps
    from megatron_cpt.data.datasets import resolve_training_data
    from megatron_cpt.checkpointing.start_checks import check_checkpoints_before_start
    from megatron_cpt.checkpointing.run_checkpoints import checkpoint_dir

    recipe = with_planned_steps(recipe)  # the steps data.chat.epochs gives, checked
    resolve_training_data(recipe.data, recipe.train, recipe.model.vocab_size,
                          with_validation=recipe.train.eval_interval > 0)
    if recipe.eval.interval:
        from megatron_cpt.eval.in_training import TrainingBenchmarks

        TrainingBenchmarks.from_recipe(recipe)  # reads the tasks and the tokenizer
    check_checkpoints_before_start(recipe.checkpoint, checkpoint_dir(recipe), recipe.model,
                                   recipe.parallel)


def start_ranks(recipe: Recipe, worker: str, worker_args: list[str], this_rank: Callable[[], int],
                several_nodes: str, run_dir: Optional[str] = None) -> int:
    """Check, then run ``this_rank()`` inside a distributed job, else ``python -m worker
    worker_args`` on the local ranks. ``several_nodes``: what to do instead when
    ``launch.nodes`` > 1; ``run_dir``: a training run's (its exit status comes from there)."""
    from megatron_cpt.launch.environment import job_environment, resolve_cpu_threads
    from megatron_cpt.launch.local import SHUTDOWN_TIMEOUT_S, inside_distributed_job, run_local
    from megatron_cpt.model.backend import check_fp8_recipe_for_te, resolve_attention_backend

    check_inputs(recipe)
    # A broken TE install, or an FP8 recipe the installed TE lacks, said once.
    if resolve_attention_backend(recipe.model.attention_backend) == "te" and recipe.model.fp8:
        check_fp8_recipe_for_te(recipe.model.fp8.recipe)
    if inside_distributed_job():
        return this_rank()
    if recipe.launch.nodes != 1:
        raise UserError(f"launch.nodes: {recipe.launch.nodes} nodes cannot start from one shell; "
                        f"{several_nodes}")
    # The ranks get the environment of a Slurm job's ranks (launch/environment.py); a variable
    # already set in this shell keeps its value, except the thread count: the recipe's.
    threads = str(resolve_cpu_threads(recipe.launch))
    env = {name: value for name, value in job_environment(recipe, SHUTDOWN_TIMEOUT_S, threads).items()
           if name not in os.environ}
    env["OMP_NUM_THREADS"] = threads
    if recipe.launch.accelerator == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks, also on a GPU machine (forked: rank_processes)
    return run_local(worker, worker_args, recipe.launch.procs_per_node, run_dir=run_dir, env=env)
