"""Accuracy from per-choice log-likelihoods: the chosen answer is the choice with the highest
score (log-likelihood, divided by the choice's length in characters for text scoring; the first
one on a tie), overall (every item counts once) and per subject, each with a 95% Wilson score
interval for a binomial proportion (scipy's ``binomtest(...).proportion_ci(method="wilson")``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from megatron_cpt.eval.prompts import choice_lengths
from megatron_cpt.eval.tasks import Task

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Accuracy:
    correct: int
    items: int
    accuracy: float
    low: float  # the Wilson interval at CONFIDENCE
    high: float


def accuracy_of(correct: int, items: int) -> Accuracy:
    from scipy.stats import binomtest  # 0.7 s of imports that every rank would pay otherwise

    interval = binomtest(correct, items).proportion_ci(CONFIDENCE, method="wilson")
    return Accuracy(correct, items, correct / items, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class ItemResult:
    subject: str
    answer: int
    chosen: int
    logprobs: tuple[float, ...]  # each choice's log-likelihood (summed over its tokens)


@dataclass(frozen=True)
class TaskResult:
    name: str
    format: str
    split: str
    shots: int
    scoring: str
    chance: float  # mean of 1 / number of choices
    overall: Accuracy
    macro: float  # mean of the subjects' accuracies
    subjects: dict[str, Accuracy]
    items: tuple[ItemResult, ...]

    @property
    def correct(self) -> list[int]:
        """1/0 per item, in item order (the ALMR fit resamples them)."""
        return [int(item.chosen == item.answer) for item in self.items]

    def to_dict(self, with_items: bool = True) -> dict:
        data = asdict(self)
        if not with_items:
            del data["items"]
        return data


def task_result(task: Task, logprobs: np.ndarray) -> TaskResult:
    """``logprobs``: one per choice of every item, in item and choice order."""
    items, offset = [], 0
    for item in task.items:
        values = logprobs[offset: offset + len(item.choices)]
        offset += len(item.choices)
        scores = values / np.array(choice_lengths(task, item), dtype=np.float64)
        items.append(ItemResult(item.subject, item.answer, int(np.argmax(scores)),
                                tuple(float(v) for v in values)))
    if offset != len(logprobs):
        raise ValueError(f"{task.name}: {len(logprobs)} log-likelihoods for {offset} choices")
    by_subject: dict[str, list[int]] = {}
    for result in items:
        by_subject.setdefault(result.subject, []).append(int(result.chosen == result.answer))
    subjects = {s: accuracy_of(sum(hits), len(hits)) for s, hits in by_subject.items()}
    config = task.config
    return TaskResult(
        name=task.name, format=config.format, split=config.split_name, shots=config.shots,
        scoring=config.scoring,
        chance=float(np.mean([1.0 / len(item.choices) for item in task.items])),
        overall=accuracy_of(sum(r.chosen == r.answer for r in items), len(items)),
        macro=float(np.mean([a.accuracy for a in subjects.values()])),
        subjects=subjects, items=tuple(items))


def _cell(accuracy: Optional[Accuracy]) -> str:
    if accuracy is None:
        return "-"
    return f"{accuracy.accuracy:.3f} [{accuracy.low:.3f}, {accuracy.high:.3f}]"


def format_table(results: dict[str, list[TaskResult]], max_subjects: int = 60) -> str:
    """One block per task: overall and per-subject accuracy of each checkpoint (columns), with
    the 95% interval. ``results``: checkpoint label -> its task results, in the same task order."""
    labels = list(results)
    width = max(26, *(len(label) for label in labels))
    blocks = []
    for index, first in enumerate(next(iter(results.values()))):
        per_checkpoint = [results[label][index] for label in labels]
        lines = [f"{first.name}: {first.format} {first.split}, {first.shots}-shot, "
                 f"{first.scoring} scoring, {first.overall.items} items, chance {first.chance:.3f}",
                 f"  {'':<{width}}" + "".join(f"  {label:>{width}}" for label in labels),
                 f"  {'overall (95% interval)':<{width}}"
                 + "".join(f"  {_cell(r.overall):>{width}}" for r in per_checkpoint)]
        if len(first.subjects) > 1:
            lines.append(f"  {'mean over subjects':<{width}}"
                         + "".join(f"  {r.macro:>{width}.3f}" for r in per_checkpoint))
            subjects = list(first.subjects)
            for subject in subjects[:max_subjects]:
                lines.append(f"  {subject:<{width}}" + "".join(
                    f"  {_cell(r.subjects.get(subject)):>{width}}" for r in per_checkpoint))
            if len(subjects) > max_subjects:
                lines.append(f"  ... {len(subjects) - max_subjects} more subjects in the JSON")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
