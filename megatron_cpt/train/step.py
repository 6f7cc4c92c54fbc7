"""One optimizer step through megatron-core's pipeline schedules.

The loss is a per-token mean over the whole global batch: each micro-batch returns
(sum of masked token losses, token count), megatron-core's schedule adds them up across
micro-batches and ``finalize_model_grads`` divides the gradients by the total token count across
data-parallel ranks (``calculate_per_token_loss``). Different TP/PP/DP layouts of the same global
batch therefore compute the same loss and the same update.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_cpt.model.packed_sequences import packed_seq_params
from megatron_cpt.runtime.evaluation_mode import evaluation_mode


@dataclass
class StepResult:
    loss: float  # mean over the global batch's loss tokens (NaN if not finite)
    tokens: int  # loss tokens in the global batch
    grad_norm: float | None
    skipped: bool  # the update was not applied (non-finite loss)


def _masked_loss_sum(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(per_token_loss.view(-1).float() * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, tokens, {"lm loss": report}


def forward_step(data_iterator: Iterator[dict], model):
    batch = next(data_iterator)
    device = next(model.parameters()).device
    # Packed conversations (fine-tuning data) carry their boundaries: attention stays inside each.
    # (The batch dicts are shared by the virtual stages' iterators: read, never modify them.)
    cu_seqlens = batch.get("cu_seqlens")
    packed = packed_seq_params(cu_seqlens, device) if cu_seqlens is not None else None
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "cu_seqlens"}
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                           packed_seq_params=packed)
    return per_token_loss, partial(_masked_loss_sum, batch["loss_mask"])


def _as_model_iterators(batches: Iterator[dict], num_chunks: int):
    if num_chunks == 1:
        return batches
    # Interleaved schedules ask each virtual stage for its own iterator; they consume the same
    # micro-batches in the same order, so each chunk gets its own copy of the stream.
    cached = list(batches)
    return [iter(cached) for _ in range(num_chunks)]


def reduce_loss_over_pipeline(outputs: list[dict]) -> tuple[float, int]:
    """(mean loss, token count) of the global batch, the same on every rank."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and outputs:
        for out in outputs:
            totals += out["lm loss"].to(device=device, dtype=torch.float64)
    # The last stage holds the sums of its DP (and CP) shard: add those up, then share them along
    # the pipeline, where the other stages contribute zeros.
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, tokens = totals.tolist()
    return (loss_sum / tokens if tokens else float("nan")), int(tokens)


def run_forward_backward(model_chunks, batches: Iterator[dict], num_microbatches: int,
                         seq_length: int, micro_batch_size: int, forward_only: bool):
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=_as_model_iterators(batches, len(model_chunks)),
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def train_step(model_chunks, optimizer, scheduler, batches: Iterator[dict], num_microbatches: int,
               seq_length: int, micro_batch_size: int, skip_nonfinite: bool,
               timers=None) -> StepResult:
    """``timers`` (megatron_cpt.train.timers.StepTimers) times the optimizer when given."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    outputs = run_forward_backward(model_chunks, batches, num_microbatches, seq_length,
                                   micro_batch_size, forward_only=False)
    loss, tokens = reduce_loss_over_pipeline(outputs)
    if not math.isfinite(loss):
        if skip_nonfinite:
            optimizer.zero_grad()
            return StepResult(loss=float("nan"), tokens=tokens, grad_norm=None, skipped=True)
        return StepResult(loss=float("nan"), tokens=tokens, grad_norm=None, skipped=False)
    with timers.phase("optimizer") if timers is not None else nullcontext():
        update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=1)
    return StepResult(loss=loss, tokens=tokens, grad_norm=grad_norm, skipped=not update_successful)


def evaluate(model_chunks, batch_streams: list[Iterator[dict]], num_microbatches: int,
             seq_length: int, micro_batch_size: int) -> list[tuple[float, int]]:
    """(mean per-token loss, loss tokens) of each given global batch (forward only)."""
    with evaluation_mode(model_chunks):
        return [reduce_loss_over_pipeline(run_forward_backward(
                    model_chunks, batches, num_microbatches, seq_length, micro_batch_size,
                    forward_only=True))
                for batches in batch_streams]
