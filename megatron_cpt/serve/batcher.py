"""Requests to generation batches, on every rank of the server.

Global rank 0 holds the HTTP server. Its handlers put ``Job``s on a queue; ``Batcher.run`` (rank 0's
main thread) takes the first waiting job and every other one waiting with it (up to
``max_batch_size``), broadcasts the batch to the other ranks, and all ranks run the same
``generate_tokens``; the jobs get their text as it is generated (``Job.emit``, called on rank 0's
main thread). The other ranks run ``follow`` until rank 0 says stop. When idle, rank 0 broadcasts a
heartbeat every ``HEARTBEAT_S`` so that no rank waits on a collective longer than the process
group's timeout.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Callable, Optional

import torch.distributed as dist

from megatron_cpt.serve.decode import Sequence, generate_tokens
from megatron_cpt.serve.text import IncrementalText, ServedTokenizer

HEARTBEAT_S = 60.0
# After the first waiting request, how long others may still join its batch.
BATCH_WINDOW_S = 0.005
_IDLE, _STOP = "idle", "stop"


@dataclasses.dataclass
class Outcome:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    error: Optional[str] = None  # generation failed: the server stops after answering


@dataclasses.dataclass
class Job:
    sequence: Sequence
    stop: tuple[str, ...]
    emit: Callable[[str, Optional[Outcome]], None]
    """Called with each new piece of text, then once more with the outcome."""
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set when the client went away: the job stops at the next token."""


def _broadcast(payload):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Batcher:
    def __init__(self, chunks, tokenizer: ServedTokenizer, vocab_size: int, max_batch_size: int):
        self._chunks = chunks
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._max_batch_size = max_batch_size
        self._queue: "queue.Queue[Job]" = queue.Queue()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def run(self, keep_going: Callable[[], bool]) -> None:
        """Rank 0: serve batches while ``keep_going()`` or jobs wait; then stop the other ranks."""
        last = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not keep_going():
                    break
                if time.monotonic() - last > HEARTBEAT_S:
                    _broadcast(_IDLE)
                    last = time.monotonic()
                continue
            jobs = [first]
            closes = time.monotonic() + BATCH_WINDOW_S
            while len(jobs) < self._max_batch_size:
                try:
                    jobs.append(self._queue.get(timeout=max(0.0, closes - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._generate(jobs)
            except Exception as exc:
                # The ranks are no longer in step: answer the batch's clients, then fail.
                for job in jobs:
                    job.emit("", Outcome("", len(job.sequence.prompt), 0, "error",
                                         f"generation failed: {exc}"))
                raise
            last = time.monotonic()
        _broadcast(_STOP)

    def _generate(self, jobs: list[Job]) -> None:
        sequences = _broadcast([job.sequence for job in jobs])
        texts = [IncrementalText(self._tokenizer, job.stop, job.sequence.params.stop_token_ids)
                 for job in jobs]

        def on_step(tokens: list[Optional[int]]) -> list[bool]:
            stop = []
            for job, text, token in zip(jobs, texts, tokens):
                if token is not None:
                    delta = text.push(token)
                    if delta:
                        job.emit(delta, None)
                stop.append(text.stopped_by_string or job.cancelled.is_set())
            return stop

        generated = generate_tokens(self._chunks, sequences, self._vocab_size, on_step)
        for job, text, tokens in zip(jobs, texts, generated):
            params = job.sequence.params
            ended = text.stopped_by_string or (tokens and tokens[-1] in params.stop_token_ids)
            rest = text.finish()
            if rest:
                job.emit(rest, None)
            job.emit("", Outcome(text.text, len(job.sequence.prompt), len(tokens),
                                 "stop" if ended or len(tokens) < params.max_new_tokens
                                 else "length"))


def follow(chunks, vocab_size: int) -> None:
    """Every rank but 0: run each batch rank 0 broadcasts until it says stop."""
    while True:
        payload = _broadcast(None)
        if payload == _STOP:
            return
        if payload == _IDLE:
            continue
        generate_tokens(chunks, payload, vocab_size)
