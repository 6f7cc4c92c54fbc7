"""One rank of a training job: ``python -m megatron_cpt.train.worker RECIPE [KEY=VALUE ...]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron_cpt.config.recipe import Recipe, load_recipe


def train_this_rank(recipe: Recipe) -> int:
    import torch.distributed as dist

    from megatron_cpt.runtime.parallel import destroy_parallel
    from megatron_cpt.train.loop import NonFiniteLossError, run_training

    run_dir = Path(recipe.logging.run_dir)
    try:
        outcome = run_training(recipe)
    except NonFiniteLossError as exc:
        if dist.get_rank() == 0:  # every rank knows the loss: one line for the job
            print(f"megatron-cpt train: error: {exc}", file=sys.stderr, flush=True)
        return 3
    if dist.get_rank() == 0:
        (run_dir / "recipe.resolved.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        print(f"[megatron-cpt] done: step {outcome.last_step}, loss {outcome.last_loss:.4f}, "
              f"run dir {run_dir}, checkpoint {outcome.checkpoint}", flush=True)
    destroy_parallel()
    return 0


def main(argv: list[str]) -> int:
    from megatron_cpt.launch.local import run_rank
    from megatron_cpt.runtime.quiet import quiet_known_warnings

    quiet_known_warnings()
    return run_rank(lambda: train_this_rank(load_recipe(argv[0], argv[1:])), "train")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
