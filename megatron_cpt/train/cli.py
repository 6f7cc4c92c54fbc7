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
    from megatron_cpt.train.startup import start_ranks
    from megatron_cpt.train.worker import train_this_rank

    recipe = load_recipe(args.recipe, args.overrides)  # errors name the field; nothing written yet
    return start_ranks(
        recipe, "megatron_cpt.train.worker", [args.recipe, *args.overrides],
        lambda: train_this_rank(recipe),
        several_nodes=f"submit a Slurm job with `megatron-cpt launch slurm {args.recipe} "
                      f"--partition P --time HH:MM:SS --submit` (docs/LAUNCH.md)",
        run_dir=recipe.logging.run_dir)
