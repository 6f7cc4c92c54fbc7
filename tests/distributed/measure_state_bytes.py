"""Per rank: the bytes of model weights, gradient buffers and optimizer state after one training
step, with the distributed optimizer off and then on. Run under torchrun:

    torchrun --standalone --nproc-per-node 8 tests/distributed/measure_state_bytes.py OUT_DIR \
        parallel.tp=2 parallel.pp=2

Writes OUT_DIR/rank_<R>.json: {"pp_rank", "tp_rank", "dp_rank", "off": {...}, "on": {...}}.
"""

import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def synthetic_batches(vocab: int, micro_batch: int, seq: int, count: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        tokens = torch.randint(0, vocab, (micro_batch, seq + 1), generator=generator)
        yield {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
               "loss_mask": torch.ones(micro_batch, seq),
               "position_ids": torch.arange(seq).expand(micro_batch, seq)}


def state_bytes(model_chunks, optimizer) -> dict:
    """Weights, gradient buffers (main_grad views) and optimizer tensors held by this rank."""
    params = [p for chunk in model_chunks for p in chunk.parameters()]
    # With the distributed optimizer the weights are views into one DDP buffer, and fp32 weights
    # are their own master copy: what shares a weight's storage is no extra memory.
    weight_storage = {p.untyped_storage().data_ptr() for p in params}
    optimizer_bytes = 0
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = inner.optimizer
        for group in torch_optimizer.param_groups:
            for p in group["params"]:
                if p.untyped_storage().data_ptr() not in weight_storage:  # an fp32 master copy
                    optimizer_bytes += p.numel() * p.element_size()
                for value in torch_optimizer.state.get(p, {}).values():
                    if hasattr(value, "numel") and value.numel() == p.numel():  # not Adam's step
                        optimizer_bytes += value.numel() * value.element_size()
    return {"parameters": sum(p.numel() for p in params),
            "weights": sum(p.numel() * p.element_size() for p in params),
            "gradients": sum(p.main_grad.numel() * p.main_grad.element_size() for p in params),
            "optimizer": optimizer_bytes}


def main(out_dir: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import (build_optimizer, destroy_parallel,
                                               initialize_parallel, wrap_with_ddp)
    from megatron_cpt.train.schedule import build_scheduler
    from megatron_cpt.train.step import train_step

    recipe = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml",
                         ["data.paths=[unused]"] + overrides)
    initialize_parallel(recipe.parallel, recipe.train.seed)
    dp_size = parallel_state.get_data_parallel_world_size()
    train = recipe.train
    result = {"pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
              "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
              "dp_rank": parallel_state.get_data_parallel_rank()}
    for name, distributed in (("off", False), ("on", True)):
        parallel = dataclasses.replace(recipe.parallel, distributed_optimizer=distributed)
        chunks = build_model(recipe.model, parallel)
        model = wrap_with_ddp(chunks, parallel)
        optimizer = build_optimizer(model, recipe.optim, parallel, recipe.model.dtype)
        scheduler = build_scheduler(optimizer, recipe.optim, train.steps)
        microbatches = train.num_microbatches(dp_size)
        batches = synthetic_batches(recipe.model.vocab_size, train.micro_batch_size,
                                     train.seq_length, microbatches)
        train_step(model, optimizer, scheduler, batches, microbatches, train.seq_length,
                   train.micro_batch_size, skip_nonfinite=False)
        result[name] = state_bytes(model, optimizer)
    Path(out_dir, f"rank_{dist.get_rank()}.json").write_text(json.dumps(result))
    destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
