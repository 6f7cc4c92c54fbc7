"""Benchmark accuracy during training, every ``eval.interval`` steps (the recipe's ``eval``
section; docs/EVAL.md):

    benchmarks = TrainingBenchmarks.from_recipe(recipe)     # every rank, after the process groups
    values = benchmarks.evaluate(model_chunks, step)         # collective, when benchmarks.due(step)

``values`` go into the step's metrics record beside the validation losses: ``eval_acc/<task>``
(also to TensorBoard), ``eval_item_correct/<task>`` (1/0 per item, jsonl only) and
``eval_acc_time_s``. The record is written after the evaluation, so a run killed during it
leaves no partial record and, resuming from its last checkpoint, evaluates that step again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_cpt.checkpointing.dist_io import pause_for_test
from megatron_cpt.config.recipe import Recipe
from megatron_cpt.eval.benchmark import Benchmarks, prepare_benchmarks, score_benchmarks
from megatron_cpt.run_files import ACCURACY, ITEM_CORRECT

# Forward-only work per token, against a training step's forward and backward (about 3x).
FORWARD_SHARE = 1 / 3


@dataclass
class TrainingBenchmarks:
    benchmarks: Benchmarks
    interval: int
    micro_batch_size: int
    run_dir: Path

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> Optional["TrainingBenchmarks"]:
        config = recipe.eval
        if not config.interval:
            return None
        benchmarks = prepare_benchmarks(
            config.tasks, config.tokenizer, config.prepend_bos,
            config.max_length or recipe.model.max_position_embeddings, recipe.model.vocab_size)
        return cls(benchmarks, config.interval, config.micro_batch_size,
                   Path(recipe.logging.run_dir))

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    def describe_cost(self, recipe: Recipe) -> str:
        """The evaluation's forward tokens against the training tokens of one interval."""
        trained = self.interval * recipe.train.global_batch_size * recipe.train.seq_length
        share = self.benchmarks.plan.tokens * FORWARD_SHARE / trained
        return (f"benchmarks every {self.interval} steps: {self.benchmarks.describe()}; about "
                f"{share:.2%} of the interval's training compute (forward only)")

    def evaluate(self, chunks, step: int) -> dict:
        """Collective over all ranks: this step's accuracy values for the metrics record."""
        start = time.perf_counter()
        # Test-only: MEGATRON_CPT_TEST_PAUSE=evaluation-<step> stops here once a batch is done.
        scored = []

        def progress(count: int) -> None:
            scored.append(count)
            if len(scored) == 1:
                pause_for_test(f"evaluation-{step}", self.run_dir)

        results = score_benchmarks(chunks, self.benchmarks, self.micro_batch_size, progress)
        values: dict = {}
        for result in results:
            values[ACCURACY + result.name] = result.overall.accuracy
            values[ITEM_CORRECT + result.name] = result.correct
        values["eval_acc_time_s"] = time.perf_counter() - start
        return values
