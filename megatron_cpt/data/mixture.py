"""The mixture, resolved against the files: token counts -> megatron-core blend weights, and the
share and number of epochs each source will get from the planned token budget.

    plan = resolve_mixture(recipe.data, recipe.train, recipe.model.vocab_size)
    print(plan.format_table())   # requested and expected share, epochs, repeat warnings

Every training sample is ``train.seq_length`` tokens (plus the one-token label shift) cut from the
concatenated documents of one source, so a source's share of samples is its share of tokens, and
megatron-core's ``BlendedDataset`` (which draws samples per normalized weight, exactly, with its
C++ helper) realizes the requested token shares when the blend weights are those shares.
Within a group (the additional language, or one remainder key) sources share in proportion to
their training tokens x ``weight``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from megatron_cpt.config.data import DataConfig, SourceConfig
from megatron_cpt.errors import ConfigError
from megatron_cpt.config.train import TrainConfig
from megatron_cpt.data.index_file import sequence_lengths

# Where examples/demo.sh (`make demo`) writes its indexed datasets; the CPU recipes read them.
DEMO_DATA_DIR = "outputs/demo/data"


@dataclass
class SourcePlan:
    name: str
    prefix: str
    language: str
    domain: Optional[str]
    group: str  # the additional language or a remainder key ("-" for untagged paths)
    recipe_field: str  # the recipe field naming its prefix, for messages
    documents: int
    tokens: int  # all documents, end-of-document tokens included
    train_tokens: int  # documents of the training split
    valid_documents: int
    requested_share: float  # share of training tokens asked for
    expected_share: float = 0.0  # share of the planned samples the blend will draw from it
    samples: int = 0  # planned training samples from it
    epochs: float = 0.0  # planned tokens from it / its training tokens


@dataclass
class MixturePlan:
    sources: list[SourcePlan]
    seq_length: int
    planned_samples: int
    additional_language: Optional[str]
    # Requested share per group (the ALMR for the additional language).
    group_shares: dict[str, float]
    # Raw weights given as data.weights: passed through (normalized), not derived from tokens.
    raw_weights: bool = False
    warnings: list[str] = field(default_factory=list)
    file_name = "mixture.json"  # RUN_DIR/<file_name>: the plan, as the run resolved it

    @property
    def planned_tokens(self) -> int:
        return self.planned_samples * self.seq_length

    @property
    def training_sources(self) -> list[SourcePlan]:
        """Sources in the training blend, in blend order (``dataset_id`` indexes this list)."""
        return [s for s in self.sources if s.requested_share > 0]

    def blend(self) -> tuple[list[str], Optional[list[float]]]:
        """megatron-core's ``blend``: (prefixes, weights); weights None for a single source."""
        sources = self.training_sources
        prefixes = [s.prefix for s in sources]
        if len(sources) == 1:
            return prefixes, None
        return prefixes, [s.requested_share for s in sources]

    def shares_by(self, key: str, share: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for source in self.sources:
            tag = getattr(source, key)
            totals[tag] = totals.get(tag, 0.0) + getattr(source, share)
        return totals

    def to_dict(self) -> dict:
        return {"seq_length": self.seq_length, "planned_samples": self.planned_samples,
                "planned_tokens": self.planned_tokens,
                "additional_language": self.additional_language,
                "group_shares": self.group_shares, "warnings": self.warnings,
                "sources": [asdict(s) for s in self.sources]}

    def format_table(self) -> str:
        lines = [f"mixture: {self.planned_samples} samples x {self.seq_length} tokens = "
                 f"{self.planned_tokens:,} planned training tokens"]
        header = (f"  {'source':<16} {'lang':<6} {'group':<8} {'train tokens':>13} "
                  f"{'requested':>9} {'expected':>9} {'epochs':>7}")
        lines.append(header)
        for s in self.sources:
            lines.append(f"  {s.name:<16} {s.language:<6} {s.group:<8} {s.train_tokens:>13,} "
                         f"{s.requested_share:>9.2%} {s.expected_share:>9.2%} {s.epochs:>7.2f}")
        for language, share in self.shares_by("language", "requested_share").items():
            expected = self.shares_by("language", "expected_share")[language]
            lines.append(f"  {'language ' + language:<46} {share:>9.2%} {expected:>9.2%}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def missing_data_hint(prefix: str) -> str:
    """The step that writes PREFIX: `make demo` for the demo's data, else `data prepare`."""
    if Path(prefix).resolve().is_relative_to(Path(DEMO_DATA_DIR).resolve()):
        return f"run `make demo` first (it writes {DEMO_DATA_DIR}/)"
    return f"write it with `megatron-cpt data prepare --output-prefix {prefix} ...`"


def count_tokens(prefix: str, where: str) -> "list[int]":
    """Per-document token counts of PREFIX.idx (checks that both files exist)."""
    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            raise FileNotFoundError(f"{where}: '{prefix}{suffix}' does not exist: "
                                    f"{missing_data_hint(prefix)}")
    if Path(prefix + ".bin").stat().st_size == 0:  # nothing to map: no tokens
        raise ConfigError(f"{where}: '{prefix}.bin' is empty: the source holds 0 tokens")
    return sequence_lengths(prefix, where)


def split_document_range(num_documents: int, split: list[float], index: int) -> tuple[int, int]:
    """Documents [begin, end) of split ``index``, rounded as megatron-core's builder rounds them."""
    begin = sum(split[:index])
    end = begin + split[index]
    return int(round(begin * num_documents)), int(round(end * num_documents))


def _check_stats(prefix: str, where: str, eod_token_id: int, vocab_size: Optional[int]) -> None:
    """PREFIX.stats.json (written by `data prepare`) names the tokenizer's ids: check them."""
    path = Path(prefix + ".stats.json")
    if not path.is_file():
        return
    stats = json.loads(path.read_text())
    eod = stats.get("eod_id")
    if stats.get("append_eod", True) and eod is not None and eod != eod_token_id:
        raise ConfigError(f"data.eod_token_id: {eod_token_id}, but {path} says {where} was "
                          f"prepared with end-of-document id {eod} ({stats.get('tokenizer')})")
    vocab = stats.get("vocab_size")
    if vocab_size is not None and vocab is not None and vocab > vocab_size:
        raise ConfigError(f"model.vocab_size: {vocab_size} is smaller than the vocabulary "
                          f"({vocab}) {where} was prepared with ({path})")


def resolve_mixture(data: DataConfig, train: TrainConfig, vocab_size: Optional[int] = None,
                    with_validation: bool = True) -> MixturePlan:
    """Read each source's token counts and plan the blend; errors name the field and file."""
    fractions = data.split_fractions()
    mixture = data.mixture
    plans = []
    for index, source in enumerate(data.sources()):
        where = data.source_field(index)
        lengths = count_tokens(source.prefix, where)
        _check_stats(source.prefix, where, data.eod_token_id, vocab_size)
        begin, end = split_document_range(len(lengths), fractions, 0)
        v_begin, v_end = split_document_range(len(lengths), fractions, 1)
        plan = SourcePlan(
            name=source.display_name, prefix=source.prefix, language=source.language,
            domain=source.domain, recipe_field=where, documents=len(lengths),
            tokens=int(lengths.sum()),
            train_tokens=int(lengths[begin:end].sum()), valid_documents=v_end - v_begin,
            group=(mixture.group_of(source) or "-") if mixture else "-", requested_share=0.0)
        if plan.tokens == 0:
            raise ConfigError(f"{where}: '{source.prefix}.idx' holds 0 tokens "
                              f"({plan.documents} documents)")
        if plan.train_tokens == 0:
            raise ConfigError(f"{where}: the training part of data.split '{data.split}' holds "
                              f"none of the {plan.documents} documents of '{source.prefix}'")
        if with_validation and plan.valid_documents == 0:
            raise ConfigError(
                f"data.split: the validation part of '{data.split}' holds none of the "
                f"{plan.documents} documents of {where} '{source.prefix}'; give it a larger "
                f"validation part (e.g. data.split=90,10,0) or set train.eval_interval=0")
        plans.append(plan)
    if mixture is not None:
        group_shares = mixture.group_shares()
        _share_within_groups(plans, data.sources(), group_shares)
        raw = False
    else:
        group_shares = {}
        _share_by_paths(plans, data.weights)
        raw = data.weights is not None
    result = MixturePlan(sources=plans, seq_length=train.seq_length,
                         planned_samples=train.steps * train.global_batch_size,
                         additional_language=mixture.additional_language if mixture else None,
                         group_shares=group_shares, raw_weights=raw)
    _plan_samples(result)
    return result


def _share_within_groups(plans: list[SourcePlan], sources: list[SourceConfig],
                         group_shares: dict[str, float]) -> None:
    for group, share in group_shares.items():
        members = [(p, s) for p, s in zip(plans, sources) if p.group == group]
        mass = sum(p.train_tokens * s.weight for p, s in members)
        for plan, source in members:
            plan.requested_share = share * plan.train_tokens * source.weight / mass if mass else 0.0


def _share_by_paths(plans: list[SourcePlan], weights: Optional[list[float]]) -> None:
    masses = weights if weights is not None else [p.train_tokens for p in plans]
    total = sum(masses)
    for plan, mass in zip(plans, masses):
        plan.requested_share = mass / total


def _plan_samples(plan: MixturePlan) -> None:
    """What megatron-core will build: ceil(planned x weight) samples per source (its builder's
    rule for a weighted blend), so the expected shares differ from the requested by rounding."""
    training = plan.training_sources
    if len(training) == 1:
        counts = [plan.planned_samples]
    else:
        # The weights normalized in float64 as megatron.core.datasets.utils.normalize does it
        # (importing it would import all of megatron-core before any rank starts).
        shares = np.array([s.requested_share for s in training], dtype=np.float64)
        weights = (shares / np.sum(shares)).tolist()
        counts = [int(math.ceil(plan.planned_samples * w)) for w in weights]
    total = sum(counts)
    for source, count in zip(training, counts):
        source.samples = count
        source.expected_share = count / total
        source.epochs = count * plan.seq_length / source.train_tokens
        if source.epochs > 1.0:
            plan.warnings.append(
                f"{source.name} will be repeated: {source.epochs:.2f} epochs of its "
                f"{source.train_tokens:,} training tokens for {source.expected_share:.2%} of "
                f"{plan.planned_tokens:,} planned tokens")
