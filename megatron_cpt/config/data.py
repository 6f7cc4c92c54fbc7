"""DataConfig: which indexed datasets feed training, and in what mixture.

Two ways to name the data:

- ``data.mixture`` (the CPT way): sources tagged by language and domain, the Additional Language
  Mixture Ratio ``almr`` (share of training tokens from sources in ``additional_language``) and
  the split of the other ``1 - almr`` by tag. ``megatron_cpt.data.mixture`` turns it into
  megatron-core blend weights from each source's token count.
- ``data.paths`` (+ optional raw ``weights``): megatron-core's own blend list, kept for quick runs.
- ``data.chat`` (supervised fine-tuning): conversations written by ``megatron-cpt data
  prepare-chat``, packed into sequences of ``train.seq_length`` (``megatron_cpt.data.chat_dataset``).

Everything here is checked without touching the disk, so cluster recipes validate anywhere; the
checks that need the files (token counts, empty sources) run when the mixture is resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from megatron_cpt.errors import ConfigError

# Source names become metric names (val_loss/<name>) and TensorBoard tags.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
SHARE_TOLERANCE = 1e-6


@dataclass
class SourceConfig:
    # Prefix of a megatron-core indexed dataset (PREFIX.bin / PREFIX.idx).
    prefix: str
    # Language tag, e.g. zh, en (or code); sources in mixture.additional_language make up the ALMR.
    language: str
    # Defaults to the prefix's file name.
    name: Optional[str] = None
    # Optional finer tag, e.g. code, math, poetry; a remainder key may name a domain.
    domain: Optional[str] = None
    # Within its group a source is drawn in proportion to tokens x weight: weight 2 repeats it twice
    # as often as its group peers.
    weight: float = 1.0

    @property
    def display_name(self) -> str:
        return self.name or self.prefix.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class MixtureConfig:
    # Additional Language Mixture Ratio: share of training tokens from the additional language.
    almr: float
    sources: list[SourceConfig] = field(default_factory=list)
    additional_language: str = "zh"
    # Split of the remaining 1 - almr by tag (a language, or a domain, which wins when a source has
    # both); the shares sum to 1. May be left out when almr is 1.
    remainder: dict[str, float] = field(default_factory=dict)

    def group_of(self, source: SourceConfig) -> Optional[str]:
        """The share group a source belongs to: the additional language, or a remainder key."""
        if source.language == self.additional_language:
            return self.additional_language
        if source.domain is not None and source.domain in self.remainder:
            return source.domain
        if source.language in self.remainder:
            return source.language
        return None

    def group_shares(self) -> dict[str, float]:
        shares = {self.additional_language: self.almr}
        for tag, share in self.remainder.items():
            shares[tag] = (1.0 - self.almr) * share
        return shares

    def validate(self) -> None:
        where = "data.mixture"
        if not 0.0 <= self.almr <= 1.0:
            raise ConfigError(f"{where}.almr: must be in [0, 1], got {self.almr}")
        if not self.sources:
            raise ConfigError(f"{where}.sources: at least one source is required")
        if not NAME_PATTERN.match(self.additional_language):
            raise ConfigError(f"{where}.additional_language: '{self.additional_language}' "
                              f"should be a tag like zh")
        self._validate_remainder(where)
        names: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            here = f"{where}.sources[{i}]"
            if not source.prefix:
                raise ConfigError(f"{here}.prefix: empty")
            if source.prefix.endswith((".bin", ".idx")):
                raise ConfigError(f"{here}.prefix: '{source.prefix}' should be the prefix "
                                  f"without .bin/.idx")
            name = source.display_name
            if not NAME_PATTERN.match(name):
                raise ConfigError(f"{here}.name: '{name}' may hold only letters, digits, _ . -")
            if name in names:
                raise ConfigError(f"{here}.name: '{name}' is also the name of "
                                  f"{where}.sources[{names[name]}]")
            names[name] = i
            if not source.weight > 0:
                raise ConfigError(f"{here}.weight: must be positive, got {source.weight}")
            if self.group_of(source) is None and self.almr < 1.0:
                raise ConfigError(
                    f"{here}: language '{source.language}'"
                    + (f" / domain '{source.domain}'" if source.domain else "")
                    + f" is neither {where}.additional_language '{self.additional_language}' "
                    f"nor a key of {where}.remainder ({', '.join(self.remainder) or 'empty'})")
        groups = {self.group_of(s) for s in self.sources}
        if self.almr > 0 and self.additional_language not in groups:
            raise ConfigError(f"{where}.almr: {self.almr} of the tokens should be "
                              f"'{self.additional_language}', but no source has that language")
        for tag, share in self.remainder.items():
            if share > 0 and self.almr < 1.0 and tag not in groups:
                raise ConfigError(f"{where}.remainder.{tag}: no source has language or domain "
                                  f"'{tag}'")

    def _validate_remainder(self, where: str) -> None:
        if self.additional_language in self.remainder:
            raise ConfigError(f"{where}.remainder.{self.additional_language}: the additional "
                              f"language's share is {where}.almr, not part of the remainder")
        for tag, share in self.remainder.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"{where}.remainder.{tag}: must be in [0, 1], got {share}")
        if self.almr < 1.0:
            total = sum(self.remainder.values())
            if abs(total - 1.0) > SHARE_TOLERANCE:
                raise ConfigError(
                    f"{where}.remainder: the shares of the non-{self.additional_language} "
                    f"tokens must sum to 1, got {total:g} ({_format_shares(self.remainder)})")


def _format_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{tag}: {share:g}" for tag, share in shares.items()) or "empty"


@dataclass
class ChatDataConfig:
    """Supervised fine-tuning on conversations (docs/SFT.md)."""

    prefixes: list[str] = field(default_factory=list)
    """Prefixes written by ``megatron-cpt data prepare-chat`` (ids, loss mask, stats)."""
    valid_share: float = 0.05
    """Share of each prefix's conversations held out for validation (``val_loss``)."""
    epochs: Optional[float] = None
    """Passes over the training conversations; when set, ``train.steps`` is computed from the
    packed data when the data is resolved, and must be left out of the recipe."""

    def validate(self) -> None:
        if not self.prefixes:
            raise ConfigError("data.chat.prefixes: at least one prefix of `megatron-cpt data "
                              "prepare-chat` output is required")
        for i, prefix in enumerate(self.prefixes):
            if not prefix or prefix.endswith((".bin", ".idx")):
                raise ConfigError(f"data.chat.prefixes[{i}]: '{prefix}' should be the prefix "
                                  "without .bin/.idx")
        if not 0.0 <= self.valid_share < 1.0:
            raise ConfigError(f"data.chat.valid_share: must be in [0, 1), got {self.valid_share}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"data.chat.epochs: must be positive, got {self.epochs}")

    def validate_run(self, micro_batch_size: int, attention_backend: str) -> None:
        """What packed sequences need from the rest of the recipe."""
        if micro_batch_size != 1:
            raise ConfigError(f"train.micro_batch_size: packed conversations run one sequence per "
                              f"micro-batch (megatron-core's THD layout); set it to 1, got "
                              f"{micro_batch_size}")
        if attention_backend == "local":
            raise ConfigError("model.attention_backend: 'local' (megatron-core's reference "
                              "attention) cannot keep packed conversations apart; use auto, te "
                              "or sdpa")


@dataclass
class DataConfig:
    mixture: Optional[MixtureConfig] = None
    # Prefixes of megatron-core indexed datasets (PREFIX.bin / PREFIX.idx), instead of a mixture.
    paths: list[str] = field(default_factory=list)
    # Raw blend weights, one per path; None = in proportion to token counts.
    weights: Optional[list[float]] = None
    # Supervised fine-tuning data instead of a mixture or paths.
    chat: Optional[ChatDataConfig] = None
    eod_token_id: int = 0
    # Train/valid/test split in percent of the documents of each source, e.g. "98,1,1". Validation
    # sets come from the valid part; the test part is held out and never read.
    split: str = "98,1,1"
    cache_dir: Optional[str] = None
    # Seed of the validation sets' sample order (default train.seed, which also orders the training
    # samples). The ALMR sweep's seed replicates vary train.seed and keep this one, so that every
    # run evaluates the same validation batches. Not with data.chat (its split follows train.seed).
    valid_seed: Optional[int] = None
    # Log a hash of each step's global batch (metrics.jsonl batch_digest) to compare runs and
    # resumes; re-reads the batch on one rank (about 0.2 s for 256 x 8192 tokens on a CPU core).
    batch_digest: bool = True

    def validate(self) -> None:
        if self.chat is not None:
            if self.mixture is not None or self.paths or self.weights is not None:
                raise ConfigError("data.chat: give either data.chat, data.mixture or data.paths, "
                                  "not several")
            self.chat.validate()
            if self.valid_seed is not None:
                raise ConfigError("data.valid_seed: not with data.chat, whose validation "
                                  "conversations are drawn with train.seed; remove it")
            return
        if self.mixture is not None:
            if self.paths or self.weights is not None:
                raise ConfigError("data.paths: give either data.mixture or data.paths "
                                  "(with data.weights), not both")
            self.mixture.validate()
        elif not self.paths:
            raise ConfigError("data.paths: at least one indexed dataset prefix is required "
                              "(or a data.mixture)")
        if self.weights is not None:
            if len(self.weights) != len(self.paths):
                raise ConfigError(
                    f"data.weights: {len(self.weights)} weights for {len(self.paths)} paths")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ConfigError("data.weights: must be >= 0 and not all zero")
        self.split_fractions()

    @property
    def loss_mask_varies(self) -> bool:
        """Fine-tuning data trains only the answers; pre-training data (megatron-core's GPTDataset
        without a pad id or ``eod_mask_loss``) trains every token."""
        return self.chat is not None

    def split_fractions(self) -> list[float]:
        try:
            parts = [float(x) for x in self.split.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0:
            raise ConfigError(f"data.split: expected three non-negative numbers with a positive "
                              f"training part, like '98,1,1', got '{self.split}'")
        return [p / sum(parts) for p in parts]

    def sources(self) -> list[SourceConfig]:
        """The mixture's sources, or one untagged source per path."""
        if self.mixture is not None:
            return list(self.mixture.sources)
        names: dict[str, int] = {}
        sources = []
        for path in self.paths:
            base = SourceConfig(prefix=path, language="-").display_name
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "source"
            count = names.get(base, 0)
            names[base] = count + 1
            sources.append(SourceConfig(prefix=path, language="-",
                                        name=base if count == 0 else f"{base}.{count}"))
        return sources

    def source_field(self, index: int) -> str:
        """The recipe field that names source ``index``, for error messages."""
        if self.mixture is not None:
            return f"data.mixture.sources[{index}].prefix"
        return f"data.paths[{index}]"
