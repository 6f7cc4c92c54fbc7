"""The first applied update of a tiny Llama in fp16 and in fp32 from the same initial weights and
batch, on one rank. Run under torchrun:

    torchrun --standalone --nproc-per-node 1 tests/distributed/fp16_first_update.py OUT.json

Each dtype retries the same batch until the optimizer applies a step (fp16's dynamic loss scale
starts at 2**32 and backs off on overflow). Writes OUT.json: {dtype: {"skipped": steps skipped
first, "mean_abs_update": mean |change| of the fp32 main weights, "lr"}}.
"""

import json
import sys

from measure_state_bytes import REPO, synthetic_batches

MAX_TRIES = 64


def first_update(recipe) -> dict:
    import torch
    from megatron.core import tensor_parallel

    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import build_optimizer, wrap_with_ddp
    from megatron_cpt.train.schedule import build_scheduler, current_lr
    from megatron_cpt.train.step import train_step

    torch.manual_seed(recipe.train.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(recipe.train.seed)
    model = wrap_with_ddp(build_model(recipe.model, recipe.parallel), recipe.parallel)
    optimizer = build_optimizer(model, recipe.optim, recipe.parallel, recipe.model.dtype)
    scheduler = build_scheduler(optimizer, recipe.optim, recipe.train.steps)
    train = recipe.train
    microbatches = train.num_microbatches(1)
    batches = list(synthetic_batches(recipe.model.vocab_size, train.micro_batch_size,
                                     train.seq_length, microbatches))
    before = [p.detach().float().clone() for chunk in model for p in chunk.parameters()]
    lr = current_lr(optimizer)
    for skipped in range(MAX_TRIES):
        result = train_step(model, optimizer, scheduler, iter(batches), microbatches,
                            train.seq_length, train.micro_batch_size, skip_nonfinite=False)
        if not result.skipped:
            break
    else:
        raise RuntimeError(f"no update applied in {MAX_TRIES} tries")
    after = [p.detach().float() for chunk in model for p in chunk.parameters()]
    changes = torch.cat([(a - b).abs().flatten() for a, b in zip(after, before)])
    return {"skipped": skipped, "mean_abs_update": changes.mean().item(), "lr": lr}


def main(out: str) -> None:
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    results = {}
    for dtype in ("fp32", "fp16"):
        recipe = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml", [
            "data.paths=[unused]", f"model.dtype={dtype}", "parallel.tp=1",
            "launch.procs_per_node=1", "optim.schedule.warmup_steps=0", "train.seq_length=32",
            "train.global_batch_size=2", "train.micro_batch_size=2"])
        initialize_parallel(recipe.parallel, recipe.train.seed)
        results[dtype] = first_update(recipe)
        destroy_parallel()
    with open(out, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1])
