"""The pre-CPT reference of an ALMR sweep: evaluate the initial weights (``checkpoint.pretrained``)
on the validation sets (and the benchmarks of an ``eval`` section), without training, and record
them as step 0 of ``metrics.jsonl``.

    megatron-cpt almr reference SWEEP_DIR/reference/recipe.yaml

That command checks and starts the ranks like ``megatron-cpt train`` (``train/startup.py``); each
rank runs ``python -m megatron_cpt.almr.reference RECIPE`` (this module's ``main``).
"""

from __future__ import annotations

import sys

from megatron_cpt.config.recipe import Recipe, load_recipe


def evaluate_initial_weights(recipe: Recipe) -> None:
    """Collective: the same model, data and validation sets as training, evaluated once."""
    from megatron_cpt.runtime.parallel import destroy_parallel
    from megatron_cpt.train.evaluation import evaluate_validation_sets
    from megatron_cpt.train.state import build_state, log

    state = build_state(recipe)
    try:
        values = evaluate_validation_sets(state.model, state.data, recipe, state.dp_rank,
                                          state.dp_size, state.num_microbatches)
        if state.benchmarks is not None:
            values.update(state.benchmarks.evaluate(state.model, 0))
        state.metrics.write(0, values)
    finally:
        state.metrics.close()
    log("pre-CPT validation losses: " + ", ".join(
        f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
    destroy_parallel()


def main(argv: list[str]) -> int:
    """One rank, started by ``megatron-cpt almr reference`` (which checks the recipe, the data and
    the initial weights first) or by a sweep's batch script."""
    from megatron_cpt.launch.environment import adopt_slurm_rank_environment
    from megatron_cpt.launch.local import run_rank

    adopt_slurm_rank_environment()  # one Slurm task per GPU (a sweep's job array)
    return run_rank(lambda: evaluate_initial_weights(load_recipe(argv[0], argv[1:])) or 0, "almr")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
