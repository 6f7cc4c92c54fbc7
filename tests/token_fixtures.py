"""Indexed datasets for tests: real text (the Python standard library's own source), one token per
byte (id = byte + 1, end-of-document id 0), written with megatron-core's IndexedDatasetBuilder."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

EOD_ID = 0
BYTE_VOCAB = 257


def stdlib_documents(limit_bytes: int) -> list[bytes]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        docs.append(data)
        total += len(data)
        if total >= limit_bytes:
            break
    return docs


def write_byte_dataset(prefix: str | Path, limit_bytes: int = 400_000,
                       doc_bytes: int | None = None) -> int:
    """Write PREFIX.bin/.idx, one document per source file (or per ``doc_bytes`` of it); returns
    the number of tokens written."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(prefix)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    tokens = 0
    docs = stdlib_documents(limit_bytes)
    if doc_bytes:
        docs = [d[i:i + doc_bytes] for d in docs for i in range(0, len(d), doc_bytes)]
    for doc in docs:
        ids = np.frombuffer(doc, dtype=np.uint8).astype(np.uint16) + 1
        ids = np.append(ids, np.uint16(EOD_ID))
        builder.add_document(ids, [len(ids)])
        tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return tokens


def byte_run_overrides(prefix: str | Path, *, steps: int | None = None, global_batch_size: int = 4,
                       micro_batch_size: int = 1, seq_length: int = 64,
                       warmup_steps: int = 1) -> list[str]:
    """Recipe overrides that train on PREFIX's byte tokens in fp32, without TensorBoard."""
    overrides = [f"data.paths=[{prefix}]", f"data.eod_token_id={EOD_ID}", "model.dtype=fp32",
                 f"train.global_batch_size={global_batch_size}",
                 f"train.micro_batch_size={micro_batch_size}", f"train.seq_length={seq_length}",
                 f"optim.schedule.warmup_steps={warmup_steps}", "logging.tensorboard=false"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    return overrides
