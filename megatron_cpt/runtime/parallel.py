"""Process groups, seeds, and the wrapping of a model into DDP + optimizer, in a fixed order.

0. ``set_cpu_threads``: the rank's intra-op thread count (part of the CPU floating-point path).
1. ``initialize_parallel``: the default process group (NCCL on CUDA, gloo on the CPU, where
   ``cpu_emulation`` is activated first), then megatron-core's TP/PP/VPP/CP/DP groups, then seeds.
2. ``build_model`` (``megatron_cpt.model``) builds this rank's chunks.
3. ``wrap_with_ddp``: megatron-core DDP over the chunks (gradient buffers, bucketed reduction),
   and the model config's hooks the pipeline schedules call (``no_sync_func``,
   ``grad_sync_func`` and ``param_sync_func`` when the reductions and all-gathers overlap,
   ``finalize_model_grads_func``).
4. ``build_optimizer``: megatron-core's optimizer (distributed when configured) over the DDP chunks,
   and the config's ``grad_scale_func`` (its loss scale).
"""

from __future__ import annotations

import datetime
import os

import torch

from megatron_cpt.config.launch import LaunchConfig
from megatron_cpt.config.optim import OptimConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.runtime import cpu_emulation
from megatron_cpt.runtime.mcore_compat import patch_adam_state_loading
from megatron_cpt.runtime.quiet import quiet_known_warnings


# Gradient-reduction buckets on GPUs: megatron-core's default up to DP 40, but fixed, so that the
# distributed optimizer's buckets, which a dp_reshardable checkpoint is laid out in, do not change
# with DP (megatron-core grows them above DP 40): such a checkpoint then loads at any DP.
GPU_BUCKET_ELEMENTS = 40_000_000


def on_cuda() -> bool:
    return torch.cuda.is_available()


def set_cpu_threads(launch: LaunchConfig) -> int:
    """This rank's intra-op threads, set explicitly: ``launch.cpu_threads``, else what its launcher
    exported (``OMP_NUM_THREADS``: ``megatron-cpt train`` and the batch script export the same
    rule), else the node's CPUs shared by its ranks. Returned for the run's records."""
    from megatron_cpt.launch.environment import resolve_cpu_threads

    threads = launch.cpu_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or \
        resolve_cpu_threads(launch)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def initialize_parallel(parallel: ParallelConfig, seed: int, timeout_minutes: int = 30) -> None:
    """Join the job (torchrun-style RANK/WORLD_SIZE/MASTER_* env) and create megatron's groups."""
    from megatron_cpt.runtime.mcore_version import check_megatron_core_version

    check_megatron_core_version()  # ranks started by Slurm have not been through the CLI
    quiet_known_warnings()
    if not on_cuda():
        cpu_emulation.activate()
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        if on_cuda():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if on_cuda() else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
    )
    # Same seed on every rank; megatron-core derives the TP-rank-specific stream itself.
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_with_ddp(chunks, parallel: ParallelConfig):
    from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                           finalize_model_grads)

    # With interleaving, the schedule starts each chunk's parameter all-gather itself while the
    # chunk before it computes, at the same moment on every pipeline rank (param_sync_func
    # below), and the forward pre-hook only waits for it; without it, each chunk's first forward
    # starts its own all-gather and waits for all of it. Megatron-LM's default.
    align_param_gather = (parallel.overlap_param_gather and parallel.distributed_optimizer
                          and parallel.vpp is not None)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        align_param_gather=align_param_gather,
        use_distributed_optimizer=parallel.distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=GPU_BUCKET_ELEMENTS if on_cuda() else 2**62,
    )
    wrapped = []
    for index, chunk in enumerate(chunks):
        wrapped.append(DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk,
            # Only the first chunk may start its reduction early (megatron-core's convention).
            disable_bucketing=index > 0))
    # The schedules read these from the config all chunks share: no_sync holds each chunk's gradient
    # reduction back until its last micro-batch, finalize_model_grads completes it after the step.
    config = chunks[0].config
    config.no_sync_func = _per_chunk([m.no_sync for m in wrapped])
    if parallel.overlap_grad_reduce:
        # The schedule starts each chunk's gradient reduction after the backward of its last
        # micro-batch, at the same moment on every pipeline rank (Megatron-LM's default), rather
        # than leaving it to the backward hooks as each rank's buckets fill.
        config.grad_sync_func = _per_chunk([m.start_grad_sync for m in wrapped])
    if align_param_gather:
        config.param_sync_func = _per_chunk([m.start_param_sync for m in wrapped])
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def _per_chunk(functions: list):
    """megatron-core takes one function for one chunk, a list (one per chunk) with interleaving."""
    return functions if len(functions) > 1 else functions[0]


def build_optimizer(ddp_chunks, optim: OptimConfig, parallel: ParallelConfig, dtype: str):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer=optim.optimizer,
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        params_dtype=torch.float32 if dtype == "fp32" else (
            torch.bfloat16 if dtype == "bf16" else torch.float16),
        use_distributed_optimizer=parallel.distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, ddp_chunks)
    patch_adam_state_loading(optimizer)
    # The schedules multiply each micro-batch's loss by the optimizer's loss scale before its
    # backward pass, which the optimizer divides out of the gradients again. fp16's dynamic scale
    # (2**32 at first, halved on overflow) keeps small gradients representable; bf16 and fp32
    # scale by 1. Without this, fp16 gradients were divided by a scale never applied.
    ddp_chunks[0].config.grad_scale_func = optimizer.scale_loss
    return optimizer


def sync_parameters(ddp_chunks) -> None:
    """Collective: make every rank's full parameters those of the last optimizer step.

    With ``overlap_param_gather`` the distributed optimizer updates only this rank's shard of the
    parameters and leaves the all-gather of the others to the pre-hooks of the next forward pass;
    until then the model holds a mix of this step's and the previous step's weights. Checkpoint
    saves and evaluation call this first (megatron-core's forced, synchronous gather).
    """
    for chunk in ddp_chunks:
        ddp_config = getattr(chunk, "ddp_config", None)
        # Without the distributed optimizer megatron-core ignores overlap_param_gather.
        if (ddp_config is not None and ddp_config.overlap_param_gather
                and ddp_config.use_distributed_optimizer):
            chunk.start_param_sync(force_sync=True)
