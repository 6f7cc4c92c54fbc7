"""The pre-CPT reference of an ALMR sweep: evaluate the initial weights (``checkpoint.pretrained``)
on the validation sets, without training, and record them as step 0 of ``metrics.jsonl``.

    python -m megatron_cpt.almr.reference SWEEP_DIR/reference/recipe.yaml

Outside a distributed job it starts ``launch.procs_per_node`` local ranks itself, like
``megatron-cpt train``; inside one (torchrun sets ``WORLD_SIZE``/``RANK``) it is the rank.
"""

from __future__ import annotations

import sys

from megatron_cpt.config.recipe import Recipe, load_recipe
from megatron_cpt.errors import UserError


def evaluate_initial_weights(recipe: Recipe) -> None:
    """Collective: the same model, data and validation sets as training, evaluated once."""
    from megatron_cpt.runtime.parallel import destroy_parallel
    from megatron_cpt.train.evaluation import evaluate_validation_sets
    from megatron_cpt.train.state import build_state, log

    state = build_state(recipe)
    try:
        values = evaluate_validation_sets(state.model, state.data, recipe, state.dp_rank,
                                          state.dp_size, state.num_microbatches)
        state.metrics.write(0, values)
    finally:
        state.metrics.close()
    log("pre-CPT validation losses: " + ", ".join(
        f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
    destroy_parallel()


def main(argv: list[str]) -> int:
    from megatron_cpt.data.mixture import resolve_mixture
    from megatron_cpt.launch.environment import adopt_slurm_rank_environment
    from megatron_cpt.launch.local import inside_distributed_job, run_local, run_rank
    from megatron_cpt.runtime.quiet import quiet_known_warnings

    quiet_known_warnings()
    adopt_slurm_rank_environment()  # one Slurm task per GPU (a sweep's job array)
    try:
        recipe = load_recipe(argv[0], argv[1:])
        if not inside_distributed_job():
            resolve_mixture(recipe.data, recipe.train, recipe.model.vocab_size)
            if recipe.launch.nodes != 1:
                raise UserError(f"launch.nodes: {recipe.launch.nodes} nodes cannot start from one "
                                f"shell; run the sweep through a batch system")
    except (UserError, FileNotFoundError) as exc:
        print(f"megatron-cpt almr: error: {exc}", file=sys.stderr)
        return 2
    if inside_distributed_job():
        return run_rank(lambda: evaluate_initial_weights(recipe) or 0, "almr")
    try:
        return run_local("megatron_cpt.almr.reference", argv, recipe.launch.procs_per_node)
    except UserError as exc:  # raised in a rank, reported once
        print(f"megatron-cpt almr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
