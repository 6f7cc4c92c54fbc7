"""The log-probabilities of a ``ScoringPlan``'s entries on megatron-core model chunks, at any
TP x PP (x VPP) x DP layout: forward passes through megatron-core's pipeline schedules, the
full-vocabulary log-softmax taken over the TP shards of the logits by megatron-core's
``vocab_parallel_cross_entropy`` (the cross entropy of the target is minus its log-probability).

Sequences are sorted longest first and taken ``micro_batch_size x PP x DP`` at a time, right-padded
to the longest of them (a causal model's logits at a position do not see what follows it); each
DP rank scores its share, and a sum over the DP and PP groups gives every rank every value.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_cpt.eval.requests import ScoringPlan
from megatron_cpt.runtime.evaluation_mode import evaluation_mode


def _micro_batch(plan: ScoringPlan, sequences: list[int], entries_of: list[np.ndarray],
                 length: int, rows: int) -> dict:
    tokens = torch.zeros(rows, length, dtype=torch.long)
    picked = []
    for row, sequence in enumerate(sequences):
        ids = plan.sequences[sequence]
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        own = entries_of[sequence]
        picked.append(np.stack([np.full(len(own), row), plan.entries[own, 1],
                                plan.entries[own, 2], own], axis=1))
    scored = torch.from_numpy(np.concatenate(picked) if picked else np.zeros((0, 4), np.int64))
    return {"tokens": tokens, "position_ids": torch.arange(length).repeat(rows, 1),
            "scored": scored}


def _forward_step(store: Callable, data_iterator, model):
    batch = next(data_iterator)
    device = next(model.parameters()).device
    output = model(batch["tokens"].to(device), batch["position_ids"].to(device), None)
    return output, lambda logits, non_loss_data=True: store(batch["scored"].to(device), logits)


def score_entries(chunks, plan: ScoringPlan, micro_batch_size: int,
                  progress: Optional[Callable] = None) -> np.ndarray:
    """Collective over all ranks: log p(target | inputs before position) of every entry, the same
    float64 array on every rank. ``progress(n)`` is called after each n sequences."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    # PP micro-batches per forward call: each pipeline stage has work, and the interleaved
    # schedule gets the multiple of PP it needs.
    per_rank = micro_batch_size * pp
    # Padded lengths split evenly over TP (sequence parallelism); FP8 GEMMs, where evaluation
    # keeps FP8 (FP8 weights), also need multiples of 16 tokens.
    config = getattr(chunks[0], "module", chunks[0]).config
    multiple = tp * (16 if config.fp8 and config.fp8_param else 1)
    device = next(chunks[0].parameters()).device
    results = torch.zeros(len(plan.entries), dtype=torch.float64, device=device)
    entries_of = [[] for _ in plan.sequences]
    for index, sequence in enumerate(plan.entries[:, 0]):
        entries_of[sequence].append(index)
    entries_of = [np.array(ids, dtype=np.int64) for ids in entries_of]

    def store(scored: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not len(scored):
            return logits.new_zeros(0)
        picked = logits[scored[:, 0], scored[:, 1]].float()  # [n, vocab / tp], a copy
        logprobs = -vocab_parallel_cross_entropy(picked, scored[:, 2])
        results[scored[:, 3]] = logprobs.double()
        return logprobs

    order = sorted(range(len(plan.sequences)), key=lambda s: (-len(plan.sequences[s]), s))
    step = per_rank * dp_size
    with evaluation_mode(chunks):
        for start in range(0, len(order), step):
            group = order[start: start + step]
            length = -(-max(len(plan.sequences[s]) for s in group) // multiple) * multiple
            mine = group[dp_rank * per_rank: (dp_rank + 1) * per_rank]
            batches = [_micro_batch(plan, mine[k: k + micro_batch_size], entries_of, length,
                                    micro_batch_size)
                       for k in range(0, per_rank, micro_batch_size)]
            iterators = [iter(batches) for _ in chunks]
            get_forward_backward_func()(
                forward_step_func=lambda it, model: _forward_step(store, it, model),
                data_iterator=iterators if len(chunks) > 1 else iterators[0], model=chunks,
                num_microbatches=len(batches), seq_length=length,
                micro_batch_size=micro_batch_size, forward_only=True, collect_non_loss_data=True)
            if progress is not None:
                progress(len(group))
    # The last stage of each pipeline holds its DP rank's values; the others hold zeros.
    dist.all_reduce(results, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(results, group=parallel_state.get_pipeline_model_parallel_group())
    return results.cpu().numpy()
