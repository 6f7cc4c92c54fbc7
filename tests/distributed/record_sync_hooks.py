"""Per rank: when megatron-core's interleaved schedule calls the model config's parameter and
gradient sync hooks, relative to each chunk's forward passes, and the losses of the same steps with
and without the overlap. Run under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/distributed/record_sync_hooks.py OUT_DIR \
        parallel.pp=2 parallel.vpp=3 model.num_layers=6

Writes OUT_DIR/rank_<R>.json: {"pp_rank", "steps": [[[kind, chunk], ...] per step], "losses":
{"plain": [...], "overlap": [...]}}, where kind is "param" (param_sync_func), "grad"
(grad_sync_func) or "forward" (a forward pass of that chunk begins).
"""

import dataclasses
import json
import sys
from pathlib import Path

from measure_state_bytes import REPO, synthetic_batches

STEPS = 2


def _recorded(kind: str, functions, steps: list):
    def wrap(chunk, function):
        def call(*args, **kwargs):
            steps[-1].append([kind, chunk])
            return function(*args, **kwargs)
        return call
    return [wrap(chunk, f) for chunk, f in enumerate(functions)] if functions else None


def train_steps(recipe, parallel, steps=None) -> list[float]:
    """Losses of STEPS steps from the seed's initial weights; with ``steps`` (a list), the hook
    calls and forward passes of each step are appended to it, one list per step."""
    import torch
    from megatron.core import parallel_state, tensor_parallel

    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import build_optimizer, wrap_with_ddp
    from megatron_cpt.train.schedule import build_scheduler
    from megatron_cpt.train.step import train_step

    torch.manual_seed(recipe.train.seed)  # the same initial weights for both runs
    tensor_parallel.model_parallel_cuda_manual_seed(recipe.train.seed)
    model = wrap_with_ddp(build_model(recipe.model, parallel), parallel)
    optimizer = build_optimizer(model, recipe.optim, parallel, recipe.model.dtype)
    scheduler = build_scheduler(optimizer, recipe.optim, recipe.train.steps)
    if steps is not None:
        config = model[0].config
        config.param_sync_func = _recorded("param", config.param_sync_func, steps)
        config.grad_sync_func = _recorded("grad", config.grad_sync_func, steps)
        for chunk, ddp_chunk in enumerate(model):
            ddp_chunk.register_forward_pre_hook(
                lambda module, args, chunk=chunk: steps[-1].append(["forward", chunk]))
    train = recipe.train
    microbatches = train.num_microbatches(parallel_state.get_data_parallel_world_size())
    batches = list(synthetic_batches(recipe.model.vocab_size, train.micro_batch_size,
                                     train.seq_length, microbatches * STEPS))
    losses = []
    for step in range(STEPS):
        if steps is not None:
            steps.append([])
        result = train_step(model, optimizer, scheduler,
                            iter(batches[step * microbatches:(step + 1) * microbatches]),
                            microbatches, train.seq_length, train.micro_batch_size,
                            skip_nonfinite=False)
        losses.append(result.loss)
    return losses


def main(out_dir: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    recipe = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml",
                         ["data.paths=[unused]", "parallel.distributed_optimizer=true"] + overrides)
    initialize_parallel(recipe.parallel, recipe.train.seed)
    plain = dataclasses.replace(recipe.parallel, overlap_grad_reduce=False,
                                overlap_param_gather=False)
    overlap = dataclasses.replace(recipe.parallel, overlap_grad_reduce=True,
                                  overlap_param_gather=True)
    steps: list = []
    losses = {"plain": train_steps(recipe, plain), "overlap": train_steps(recipe, overlap, steps)}
    result = {"pp_rank": parallel_state.get_pipeline_model_parallel_rank(), "steps": steps,
              "losses": losses}
    Path(out_dir, f"rank_{dist.get_rank()}.json").write_text(json.dumps(result))
    destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
