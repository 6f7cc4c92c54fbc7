"""Small generated sources for the mixture tests: indexed datasets of random token ids (random
document lengths, end-of-document id 0), written with megatron-core's IndexedDatasetBuilder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EOD_ID = 0
VOCAB = 1000


def write_source(prefix: Path, tokens: int, seed: int, max_doc: int = 400) -> int:
    """About ``tokens`` tokens in documents of 2..max_doc tokens; returns the exact count."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    written = 0
    while written < tokens:
        length = int(rng.integers(2, max_doc))
        ids = rng.integers(1, VOCAB, size=length, dtype=np.uint16)
        ids[-1] = EOD_ID
        builder.add_document(ids, [length])
        written += length
    builder.finalize(f"{prefix}.idx")
    return written


def write_empty_source(prefix: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.finalize(f"{prefix}.idx")


def mixture_overrides(mixture: dict, extra: list[str] = ()) -> list[str]:
    """Overrides that replace the tiny recipe's data.paths by ``mixture`` (JSON is YAML)."""
    return ["data.paths=[]", f"data.eod_token_id={EOD_ID}", f"data.mixture={json.dumps(mixture)}",
            *extra]


def write_two_language_mixture(root: Path, almr: float = 0.33) -> dict:
    """Two 20k-token sources, ``zh_a`` (zh) and ``en_a`` (en), under ``root``; returns the
    ``data.mixture`` that blends them at ``almr`` with English as the remainder."""
    for seed, name in enumerate(("zh_a", "en_a")):
        write_source(root / name, 20_000, seed)
    return {"almr": almr, "remainder": {"en": 1.0}, "sources": [
        {"name": "zh_a", "prefix": str(root / "zh_a"), "language": "zh"},
        {"name": "en_a", "prefix": str(root / "en_a"), "language": "en"}]}
