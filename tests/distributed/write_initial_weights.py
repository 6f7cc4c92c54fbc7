"""Write a randomly initialised model of a recipe as a one-rank dist checkpoint ("initial weights").

    python tests/distributed/write_initial_weights.py RECIPE OUT_DIR [KEY=VALUE ...]

Parity tests start every TP/PP/DP layout from this one checkpoint, so they compare the layouts'
arithmetic rather than their initialisation order.
"""

import dataclasses
import os
import sys


def main(recipe_path: str, out_dir: str, overrides: list[str]) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    from megatron_cpt.checkpointing.dist_io import model_sharded_state_dict, save_dist_checkpoint
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    recipe = load_recipe(recipe_path, overrides + ["launch.procs_per_node=1", "parallel.tp=1",
                                                   "parallel.pp=1", "parallel.vpp=null"])
    initialize_parallel(ParallelConfig(), recipe.train.seed)
    chunks = build_model(recipe.model, ParallelConfig())
    save_dist_checkpoint(model_sharded_state_dict(chunks), out_dir,
                         {"kind": "initial", "model": dataclasses.asdict(recipe.model),
                          "parallel": {"tp": 1, "pp": 1, "vpp": None}})
    destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
