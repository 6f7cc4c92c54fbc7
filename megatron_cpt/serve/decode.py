"""Decoding with a KV cache on megatron-core ``GPTModel`` chunks, at any TP x PP (DP 1), on GPUs
or CPU ranks: the same forward calls on every rank, through megatron-core's forward-only pipeline
schedules, with megatron-core's ``StaticInferenceContext`` holding each layer's keys and values.

A batch of prompts of different lengths is run without padding, as megatron-core's static engine
runs it: the prompt part that all prompts share in length is one forward pass (the prefill), then
one token per step for every sequence; a sequence whose prompt is longer is fed its own next
prompt token until its prompt ends, and only then samples. Each sequence therefore sees exactly
its own tokens at its own positions, and greedy decoding gives the tokens transformers' ``generate``
gives on the same weights.

Per step the last pipeline stage picks each sequence's next token (``sampling.choose_token``) and
broadcasts the tokens to every rank of the model-parallel group; its first rank (the server's)
is then asked which sequences stop (stop strings, a client gone) and broadcasts that.

Why not megatron-core's own engine (``megatron/core/inference/``, 0.16.1) on CPU ranks
(docs/SERVE.md): ``text_generation_controller.py`` line 1163 records a ``torch.cuda.Event`` in
every decoding step (on one CPU rank: "Tried to instantiate dummy base class Event");
``communication_utils.py`` line 31 asserts ``tensor.is_cuda`` for every pipeline broadcast (PP > 1
on gloo fails); ``engines/static_engine.py`` line 93 first tries the dynamic engine, whose context
allocates CUDA memory; and the inference wrapper (``abstract_model_inference_wrapper.py`` line 51)
refuses a list of model chunks. Its KV cache (``StaticInferenceContext`` and the attention's cache
update) is what this module uses.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_cpt.serve.sampling import SamplingParams, choose_token, make_generator


@dataclasses.dataclass(frozen=True)
class Sequence:
    """One prompt to continue: its token ids and how to sample."""
    prompt: tuple[int, ...]
    params: SamplingParams


# on_step(new_tokens) -> which sequences to stop now; new_tokens[i] is the token sequence i just
# generated, or None where it is still in its prompt or has stopped.
StepObserver = Callable[[list[Optional[int]]], list[bool]]


def _forward(chunks, context: StaticInferenceContext, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """One forward pass of [batch, new tokens] at the cache's offset; the last stage returns the
    logits of each sequence's last token over the whole vocabulary, [batch, vocab]."""
    device = next(chunks[0].parameters()).device
    tokens = tokens.to(device)
    length = tokens.size(1)
    positions = torch.arange(context.sequence_len_offset, context.sequence_len_offset + length,
                             device=device).repeat(tokens.size(0), 1)
    kept = []

    def forward_step(_iterator, model):
        # Logits gathered over TP: [batch, 1 (the last token), padded vocabulary] on every TP rank.
        output = model(tokens, positions, None, inference_context=context,
                       runtime_gather_output=True)

        def keep(logits, non_loss_data=True):
            kept.append(logits[:, -1, :])
            return logits
        return output, keep

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([None]), model=chunks,
        num_microbatches=1, seq_length=length, micro_batch_size=tokens.size(0),
        forward_only=True, collect_non_loss_data=True)
    context.sequence_len_offset += length
    return kept[0] if kept else None


def _model_parallel_ranks() -> tuple[object, int, int]:
    """This rank's model-parallel group (TP x PP), the global rank that broadcasts the chosen
    tokens in it (TP rank 0 of the last pipeline stage) and its first rank (the observer's)."""
    group = parallel_state.get_model_parallel_group()
    ranks = dist.get_process_group_ranks(group)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    return group, ranks[(pp - 1) * tp], ranks[0]


@torch.no_grad()
def generate_tokens(chunks, sequences: list[Sequence], vocab_size: int,
                    on_step: Optional[StepObserver] = None) -> list[list[int]]:
    """Collective over a model-parallel group (each rank passes the same ``sequences``; data-
    parallel replicas, if any, each generate the same): the tokens generated for each sequence, a
    stop token included where one ended it. ``on_step`` is called on the group's first rank."""
    group, source, observer = _model_parallel_ranks()
    batch = len(sequences)
    prompts = [list(s.prompt) for s in sequences]
    total = max(len(p) + s.params.max_new_tokens for p, s in zip(prompts, sequences))
    context = StaticInferenceContext(batch, total)
    generators = [make_generator(s.params) for s in sequences]
    generated: list[list[int]] = [[] for _ in sequences]
    done = [False] * batch
    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    start = min(len(p) for p in prompts)
    tokens = torch.tensor([p[:start] for p in prompts], dtype=torch.long)
    position = start  # the position whose token is decided next
    device = next(chunks[0].parameters()).device
    while not all(done):
        logits = _forward(chunks, context, tokens)
        chosen = torch.zeros(batch, dtype=torch.long, device=device)
        if last_stage:
            for row, sequence in enumerate(sequences):
                if position < len(prompts[row]):
                    chosen[row] = prompts[row][position]
                elif not done[row]:
                    chosen[row] = choose_token(logits[row, :vocab_size], sequence.params,
                                               generators[row])
        dist.broadcast(chosen, src=source, group=group)
        chosen = chosen.cpu()
        new_tokens: list[Optional[int]] = [None] * batch
        for row, sequence in enumerate(sequences):
            if done[row] or position < len(prompts[row]):
                continue
            token = int(chosen[row])
            generated[row].append(token)
            new_tokens[row] = token
            done[row] = (token in sequence.params.stop_token_ids
                         or len(generated[row]) >= sequence.params.max_new_tokens)
        stop = torch.zeros(batch, dtype=torch.uint8)
        if on_step is not None and dist.get_rank() == observer:
            stop = torch.tensor(on_step(new_tokens), dtype=torch.uint8)
        stop = stop.to(device)
        dist.broadcast(stop, src=observer, group=group)
        done = [d or bool(s) for d, s in zip(done, stop.tolist())]
        if position + 1 >= total:
            break
        context.enable_decode_mode()
        tokens = chosen.unsqueeze(1)
        position += 1
    return generated
