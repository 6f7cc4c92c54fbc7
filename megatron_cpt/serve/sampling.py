"""How the next token of a sequence is chosen from the model's logits: greedy (temperature 0) or
sampled with temperature, top-k and top-p, from a generator seeded per request so that a seeded
request gives the same tokens on every call and on every rank that samples it."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    """Tokens to generate at most (the stop token, when one ends the answer, is one of them)."""
    temperature: float = 0.0
    """0 picks the most likely token (greedy); above 0 the logits are divided by it and sampled."""
    top_p: float = 1.0
    """Sample from the smallest set of most likely tokens whose probabilities reach top_p."""
    top_k: int = 0
    """Sample from the top_k most likely tokens (0: all)."""
    seed: Optional[int] = None
    """The sampling generator's seed; the server draws one when a request gives none."""
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end the answer (the end of document, the end of turn)."""

    def validate(self) -> None:
        """Raises ValueError naming the field (the server turns it into an HTTP 400)."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature: must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> Optional[torch.Generator]:
    if params.greedy:
        return None
    generator = torch.Generator(device="cpu")
    generator.manual_seed(params.seed if params.seed is not None else 0)
    return generator


def choose_token(logits: torch.Tensor, params: SamplingParams,
                 generator: Optional[torch.Generator]) -> int:
    """The next token from one sequence's logits over the vocabulary, [vocab]."""
    logits = logits.float()
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop = torch.cumsum(probs, dim=-1) - probs >= params.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
