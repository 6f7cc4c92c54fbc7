"""Per rank: when megatron-core's interleaved schedule calls the model config's parameter and
gradient sync hooks, relative to each chunk's forward passes, and the losses of the same steps with
and without the overlap. Run under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/distributed/record_sync_hooks.py OUT_DIR \
        parallel.pp=2 parallel.vpp=3 model.num_layers=6

Writes OUT_DIR/rank_<R>.json: {"pp_rank", "steps": [[[kind, chunk], ...] per step], "losses":
{"plain": [...], "overlap": [...]}, "evaluation": {...}}, where kind is "param" (param_sync_func),
"grad" (grad_sync_func) or "forward" (a forward pass of that chunk begins).

"evaluation": the same model after its overlapped steps, with an FP8 recipe set on its config
(megatron-core's FP8 context stubbed, so that it runs on the CPU and records its entries): the
events of one more training step, of a validation pass (``train.step.evaluate``) and of benchmark
scoring (``eval.forward.score_entries``), each [[kind, detail], ...], where kind is also "gather"
(a bucket group's parameter all-gather; detail: forced or not) or "fp8" (an FP8 context entered),
and "bucket_groups": this rank's bucket groups.
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


def train_steps(recipe, parallel, steps=None, evaluation=None) -> list[float]:
    """Losses of STEPS steps from the seed's initial weights; with ``steps`` (a list), the hook
    calls and forward passes of each step are appended to it, one list per step; with
    ``evaluation`` (a dict), what the evaluation phase (module docstring) records goes into it."""
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
    if evaluation is not None:
        record_evaluation(model, optimizer, scheduler, batches[:microbatches], recipe, evaluation,
                          steps)
    return losses


def record_evaluation(model, optimizer, scheduler, batches, recipe, evaluation: dict, steps: list):
    import numpy as np
    from megatron.core.distributed import param_and_grad_buffer
    from megatron.core.transformer import transformer_block

    from megatron_cpt.eval.forward import score_entries
    from megatron_cpt.eval.requests import ScoringPlan
    from megatron_cpt.train.step import evaluate, train_step

    config = model[0].config
    config.fp8, config.fp8_recipe = "hybrid", "delayed"
    gather = param_and_grad_buffer._ParamAndGradBucketGroup.start_param_sync
    fp8_context = transformer_block.get_fp8_context

    def recorded_gather(self, force_sync=False):
        steps[-1].append(["gather", "forced" if force_sync else "overlapped"])
        return gather(self, force_sync=force_sync)

    def recorded_fp8_context(*args, **kwargs):
        steps[-1].append(["fp8", None])
        return fp8_context(*args, **kwargs)  # a null context without Transformer Engine

    param_and_grad_buffer._ParamAndGradBucketGroup.start_param_sync = recorded_gather
    transformer_block.get_fp8_context = recorded_fp8_context
    train = recipe.train
    microbatches = len(batches)
    try:
        steps.append([])
        train_step(model, optimizer, scheduler, iter(batches), microbatches, train.seq_length,
                   train.micro_batch_size, skip_nonfinite=False)
        evaluation["training_step"] = steps.pop()
        steps.append([])
        evaluate(model, [iter(batches)], microbatches, train.seq_length, train.micro_batch_size)
        evaluation["validation"] = steps.pop()
        steps.append([])
        plan = ScoringPlan(sequences=((1, 2, 3, 4, 5), (6, 7, 8)),
                           entries=np.array([[0, 3, 5], [1, 1, 8]], dtype=np.int64),
                           request_entries=((0, 1), (1, 2)), truncated=0)
        score_entries(model, plan, micro_batch_size=1)
        evaluation["scoring"] = steps.pop()
    finally:
        param_and_grad_buffer._ParamAndGradBucketGroup.start_param_sync = gather
        transformer_block.get_fp8_context = fp8_context
    evaluation["fp8_after"] = config.fp8
    evaluation["bucket_groups"] = sum(len(chunk.bucket_groups) for chunk in model)


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
    evaluation: dict = {}
    losses = {"plain": train_steps(recipe, plain),
              "overlap": train_steps(recipe, overlap, steps, evaluation)}
    result = {"pp_rank": parallel_state.get_pipeline_model_parallel_rank(), "steps": steps,
              "losses": losses, "evaluation": evaluation}
    Path(out_dir, f"rank_{dist.get_rank()}.json").write_text(json.dumps(result))
    destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
