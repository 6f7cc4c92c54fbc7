"""``megatron-cpt train RECIPE [KEY=VALUE ...]``: validate the recipe, then train on its ranks.

    megatron-cpt train examples/llama3_tiny_cpt_2xcpu.yaml train.steps=20 parallel.tp=2

Outside a distributed job this starts ``launch.procs_per_node`` local ranks itself (torchrun,
single node); inside one (torchrun sets ``RANK``/``WORLD_SIZE``) it is the rank. Several nodes:
``megatron-cpt launch slurm`` (srun sets only ``SLURM_PROCID``/``SLURM_NTASKS``; the generated
script starts torchrun per node, or maps those to ``RANK``/``WORLD_SIZE`` per GPU).

Exit status: 0 finished, 2 bad input, 3 non-finite loss, 75 stopped early with a checkpoint
(SIGTERM or ``train.time_limit_minutes``): run the same command again to resume.
"""

from __future__ import annotations

import argparse


def register(verbs) -> None:
    parser = verbs.add_parser("train", help="train (continual pre-training) from a recipe",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe, e.g. examples/llama3_tiny_cpt_2xcpu.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. parallel.tp=2 train.steps=20")
    parser.set_defaults(func=run)


def run(args) -> int:
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.data.mixture import resolve_mixture
    from megatron_cpt.launch.local import inside_distributed_job, run_local

    recipe = load_recipe(args.recipe, args.overrides)  # errors name the field; nothing written yet
    # The data files too (present, non-empty, ids match the model) before any rank or run dir.
    resolve_mixture(recipe.data, recipe.train, recipe.model.vocab_size,
                    with_validation=recipe.train.eval_interval > 0)
    # And the initial weights (or the checkpoint to resume from): present, whole, of this model.
    from megatron_cpt.model.specs import resolve_attention_backend
    from megatron_cpt.train.checkpoint import check_checkpoints_before_start
    from megatron_cpt.train.state import checkpoint_dir

    check_checkpoints_before_start(recipe.checkpoint, checkpoint_dir(recipe), recipe.model)
    resolve_attention_backend(recipe.model.attention_backend)  # a broken TE install, said once
    if inside_distributed_job():
        from megatron_cpt.train.worker import train_this_rank

        return train_this_rank(recipe)
    if recipe.launch.nodes != 1:
        from megatron_cpt.errors import UserError

        raise UserError(
            f"launch.nodes: {recipe.launch.nodes} nodes cannot start from one shell; submit a "
            f"Slurm job with `megatron-cpt launch slurm {args.recipe} --partition P --time "
            f"HH:MM:SS --submit` (docs/LAUNCH.md)")
    return run_local("megatron_cpt.train.worker", [args.recipe, *args.overrides],
                     recipe.launch.procs_per_node, run_dir=recipe.logging.run_dir)
