"""Tasks ready to score on a model, shared by ``megatron-cpt eval`` and the training loop:

    benchmarks = prepare_benchmarks(recipe.eval.tasks, "sp:tok/tokenizer.model", False, 1024, 4000)
    results = score_benchmarks(model_chunks, benchmarks, micro_batch_size=4)   # collective

``prepare_benchmarks`` reads every task, renders its prompts and tokenizes them (it needs no
process group: the CLI runs it before any rank starts, so bad input is refused first); all tasks
share one ``ScoringPlan`` so their sequences batch together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from megatron_cpt.config.eval import EvalTaskConfig
from megatron_cpt.data.tokenizers import load_tokenizer
from megatron_cpt.eval.prompts import choice_requests
from megatron_cpt.eval.requests import ScoringPlan, plan_scoring
from megatron_cpt.eval.results import TaskResult, task_result
from megatron_cpt.eval.tasks import Task, load_task


@dataclass(frozen=True)
class Benchmarks:
    tasks: tuple[Task, ...]
    plan: ScoringPlan  # every choice of every item of every task, one request each
    requests_per_task: tuple[int, ...]

    @property
    def items(self) -> int:
        return sum(len(task.items) for task in self.tasks)

    def describe(self) -> str:
        return (f"{len(self.tasks)} task(s), {self.items:,} items, {self.plan.requests:,} choices "
                f"in {len(self.plan.sequences):,} sequences of {self.plan.tokens:,} tokens"
                + (f" ({self.plan.truncated} cut to max_length)" if self.plan.truncated else ""))


def prepare_benchmarks(configs: list[EvalTaskConfig], tokenizer: str, prepend_bos: bool,
                       max_length: int, vocab_size: int) -> Benchmarks:
    tasks = tuple(load_task(config) for config in configs)
    pairs_per_task = [[pair for item in task.items for pair in choice_requests(task, item)]
                      for task in tasks]
    plan = plan_scoring([pair for pairs in pairs_per_task for pair in pairs],
                        load_tokenizer(tokenizer), prepend_bos, max_length, vocab_size)
    return Benchmarks(tasks, plan, tuple(len(pairs) for pairs in pairs_per_task))


def score_benchmarks(chunks, benchmarks: Benchmarks, micro_batch_size: int,
                     progress: Optional[Callable[[int], None]] = None) -> list[TaskResult]:
    """Collective over all ranks of the job; every rank gets the same results."""
    from megatron_cpt.eval.forward import score_entries

    entry_logprobs = score_entries(chunks, benchmarks.plan, micro_batch_size, progress)
    per_request = benchmarks.plan.request_logprobs(entry_logprobs)
    results, start = [], 0
    for task, count in zip(benchmarks.tasks, benchmarks.requests_per_task):
        results.append(task_result(task, per_request[start: start + count]))
        start += count
    return results
