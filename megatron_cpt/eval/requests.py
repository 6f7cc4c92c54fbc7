"""(context, continuation) pairs -> token sequences and the positions whose log-probabilities
are summed, the way lm-evaluation-harness's ``hf`` model does it, so the two agree per request:

- whitespace at the end of the context moves to the start of the continuation;
- the context is encoded alone and the continuation is what encoding both adds after it
  (``encode(context + continuation)[len(encode(context)):]``); with ``prepend_bos`` both start
  with the beginning-of-text id;
- the model reads ``(context + continuation)[-(max_length + 1):][:-1]``: a long context loses its
  start, and each continuation token is predicted at the position before it.

Requests whose model inputs are identical share one sequence (the four answer letters of an item
are one forward pass); ``ScoringPlan.entries`` lists every (sequence, position, target) scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_cpt.data.tokenizers import Tokenizer
from megatron_cpt.errors import UserError


@dataclass(frozen=True)
class ScoringPlan:
    sequences: tuple[tuple[int, ...], ...]  # the model inputs
    entries: np.ndarray  # [n, 3] int64: sequence, position, target token
    request_entries: tuple[tuple[int, int], ...]  # per request: its entries [start, stop)
    truncated: int  # requests whose context lost its start to max_length

    @property
    def requests(self) -> int:
        return len(self.request_entries)

    @property
    def tokens(self) -> int:
        """Tokens of all sequences, unpadded."""
        return sum(len(s) for s in self.sequences)

    def request_logprobs(self, entry_logprobs: np.ndarray) -> np.ndarray:
        """Each request's log-likelihood: the sum over its continuation tokens."""
        sums = np.concatenate([[0.0], np.cumsum(entry_logprobs, dtype=np.float64)])
        bounds = np.array(self.request_entries, dtype=np.int64).reshape(-1, 2)
        return sums[bounds[:, 1]] - sums[bounds[:, 0]]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str,
                prepend_bos: bool) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    bos = [tokenizer.bos_id] if prepend_bos else []
    context_ids = bos + tokenizer.encode(context)
    whole = bos + tokenizer.encode(context + continuation)
    return context_ids, whole[len(context_ids):]


def plan_scoring(pairs: list[tuple[str, str]], tokenizer: Tokenizer, prepend_bos: bool,
                 max_length: int, vocab_size: int) -> ScoringPlan:
    """The sequences and scored positions of ``pairs`` (one request each, in order)."""
    if prepend_bos and tokenizer.bos_id is None:
        raise UserError(f"prepend_bos: tokenizer '{tokenizer.name}' has no beginning-of-text id")
    if tokenizer.vocab_size > vocab_size:
        raise UserError(f"tokenizer '{tokenizer.name}': {tokenizer.vocab_size} tokens, more than "
                        f"the model's vocabulary ({vocab_size}): not the model's tokenizer")
    index: dict[tuple[int, ...], int] = {}
    sequences: list[tuple[int, ...]] = []
    entries: list[tuple[int, int, int]] = []
    request_entries = []
    truncated = 0
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation, prepend_bos)
        if not context_ids:
            raise UserError(f"the context {context[:40]!r} encodes to no token")
        if not continuation_ids:
            raise UserError(f"the continuation {continuation!r} adds no token after its context")
        if len(continuation_ids) > max_length:
            raise UserError(f"the continuation {continuation[:40]!r} is {len(continuation_ids)} "
                            f"tokens, more than max_length {max_length}")
        whole = (context_ids + continuation_ids)[-(max_length + 1):]
        truncated += len(context_ids) + len(continuation_ids) > max_length + 1
        inputs = tuple(whole[:-1])
        sequence = index.setdefault(inputs, len(sequences))
        if sequence == len(sequences):
            sequences.append(inputs)
        first = len(inputs) - len(continuation_ids)
        start = len(entries)
        entries.extend((sequence, first + j, token) for j, token in enumerate(continuation_ids))
        request_entries.append((start, len(entries)))
    return ScoringPlan(tuple(sequences), np.array(entries, dtype=np.int64).reshape(-1, 3),
                       tuple(request_entries), truncated)
