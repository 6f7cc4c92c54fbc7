"""What the model will actually see: draw the training samples of the first N steps, exactly as
``megatron-cpt train`` builds them, and count their tokens per source, language and group.

    megatron-cpt data inspect-mix examples/demo_llama3_tiny_cpt_2xcpu.yaml --steps 200
    megatron-cpt data inspect-mix RECIPE data.mixture.almr=0.7 --json --tolerance 0.005

A token counts when it is trained on (its loss-mask entry is 1: padding never counts).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

from megatron_cpt.errors import ConfigError
from megatron_cpt.config.recipe import Recipe
from megatron_cpt.data.mixture import MixturePlan, resolve_mixture


@dataclass
class ShareRow:
    name: str
    requested: float
    expected: float
    realized: float
    tokens: int  # trained-on tokens drawn in the inspected steps

    @property
    def deviation(self) -> float:
        return self.realized - self.requested


@dataclass
class MixReport:
    steps: int
    samples: int
    tokens: int
    plan: MixturePlan
    sources: list[ShareRow] = field(default_factory=list)
    languages: list[ShareRow] = field(default_factory=list)
    groups: list[ShareRow] = field(default_factory=list)

    @property
    def max_deviation(self) -> float:
        return max(abs(row.deviation) for row in self.sources + self.languages + self.groups)

    def to_dict(self) -> dict:
        def rows(items):
            return {r.name: {"requested": r.requested, "expected": r.expected,
                             "realized": r.realized, "tokens": r.tokens} for r in items}
        return {"steps": self.steps, "samples": self.samples, "tokens": self.tokens,
                "max_deviation": self.max_deviation, "sources": rows(self.sources),
                "languages": rows(self.languages), "groups": rows(self.groups),
                "plan": self.plan.to_dict()}

    def format_table(self) -> str:
        epochs = {s.name: s.epochs for s in self.plan.sources}
        lines = [f"inspected {self.steps} steps = {self.samples} samples = {self.tokens:,} "
                 f"trained-on tokens (planned run: {self.plan.planned_tokens:,} tokens)",
                 f"  {'':<24} {'requested':>9} {'expected':>9} {'realized':>9} {'tokens':>12}"
                 f" {'epochs':>7}"]
        sections = [("source", self.sources), ("language", self.languages)]
        if [(r.name, r.tokens) for r in self.groups] != [(r.name, r.tokens) for r in self.languages]:
            sections.append(("group", self.groups))
        for title, rows in sections:
            for row in rows:
                epoch = f"{epochs[row.name]:>7.2f}" if title == "source" else ""
                lines.append(f"  {title + ' ' + row.name:<24} {row.requested:>9.2%} "
                             f"{row.expected:>9.2%} {row.realized:>9.2%} {row.tokens:>12,} {epoch}")
        lines.append(f"  largest |realized - requested|: {self.max_deviation * 100:.3f} "
                     f"percentage points")
        lines.extend(f"  warning: {w}" for w in self.plan.warnings)
        return "\n".join(lines)


@contextlib.contextmanager
def single_process_group(directory: str) -> Iterator[None]:
    """megatron-core's dataset builders ask torch.distributed for the rank when they write their
    index cache; outside a job give them a world of one (gloo, file store, nothing listens)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def inspect_mix(recipe: Recipe, steps: Optional[int] = None,
                cache_dir: Optional[str] = None) -> MixReport:
    """Count the tokens of the first ``steps`` global batches (default: all of ``train.steps``)."""
    from megatron_cpt.data.datasets import build_training_data

    train = recipe.train
    steps = train.steps if steps is None else steps
    if not 0 < steps <= train.steps:
        raise ConfigError(f"train.steps: inspecting {steps} steps needs a run of at least that "
                          f"many (train.steps={train.steps}); pass train.steps={steps}")
    plan = resolve_mixture(recipe.data, train, recipe.model.vocab_size, with_validation=False)
    samples = steps * train.global_batch_size
    with tempfile.TemporaryDirectory(prefix="inspect-mix-") as scratch:
        with single_process_group(scratch):
            built = build_training_data(recipe.data, train, recipe.model.vocab_size,
                                        train.steps * train.global_batch_size, 0,
                                        cache_dir=cache_dir or f"{scratch}/cache", plan=plan)
            tokens = _count_tokens_per_source(built.train, samples, len(plan.training_sources))
    return _report(plan, steps, samples, tokens)


def _count_tokens_per_source(dataset, samples: int, num_sources: int) -> list[int]:
    counts = [0] * num_sources
    for index in range(samples):
        sample = dataset[index]
        # A GPTDataset (one source) has no dataset_id.
        source = int(sample.get("dataset_id", 0))
        counts[source] += int(sample["loss_mask"].sum())
    return counts


def _report(plan: MixturePlan, steps: int, samples: int, counts: list[int]) -> MixReport:
    total = sum(counts)
    drawn = {s.name: c for s, c in zip(plan.training_sources, counts)}
    report = MixReport(steps=steps, samples=samples, tokens=total, plan=plan)
    for source in plan.sources:
        got = drawn.get(source.name, 0)
        report.sources.append(ShareRow(source.name, source.requested_share,
                                       source.expected_share, got / total, got))
    for key, rows in (("language", report.languages), ("group", report.groups)):
        requested = plan.shares_by(key, "requested_share")
        expected = plan.shares_by(key, "expected_share")
        for tag in requested:
            got = sum(drawn.get(s.name, 0) for s in plan.sources if getattr(s, key) == tag)
            rows.append(ShareRow(tag, requested[tag], expected[tag], got / total, got))
    return report
