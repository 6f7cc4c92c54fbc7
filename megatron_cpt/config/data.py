"""DataConfig: which indexed datasets feed training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_cpt.config.loader import ConfigError


@dataclass
class DataConfig:
    # Prefixes of megatron-core indexed datasets (PREFIX.bin / PREFIX.idx).
    paths: list[str] = field(default_factory=list)
    # Blend weights, one per path; None = by size.
    weights: Optional[list[float]] = None
    eod_token_id: int = 0
    # Train/valid/test split in percent of documents of each path, e.g. "98,1,1".
    split: str = "98,1,1"
    cache_dir: Optional[str] = None

    def validate(self) -> None:
        if not self.paths:
            raise ConfigError("data.paths: at least one indexed dataset prefix is required")
        if self.weights is not None:
            if len(self.weights) != len(self.paths):
                raise ConfigError(
                    f"data.weights: {len(self.weights)} weights for {len(self.paths)} paths")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ConfigError("data.weights: must be >= 0 and not all zero")
        try:
            parts = [float(x) for x in self.split.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
            raise ConfigError(f"data.split: expected three non-negative numbers like '98,1,1', got '{self.split}'")
