"""The per-sequence token counts of a megatron-core indexed dataset (``PREFIX.idx``), read with
numpy alone.

The checks made before any rank starts (``data/mixture.py``, ``data/chat_dataset.py``) need only
these counts; megatron-core's ``IndexedDataset`` would import torch and all of megatron-core (about
2 s) to read them. The ranks read the data through ``IndexedDataset`` itself. The header read here
is the one ``IndexedDatasetBuilder.finalize`` writes: the 9-byte magic ``MMIDIDX\\0\\0``, then, little
endian, the format version (u64, 1), the token dtype code (u8, 1-8), the sequence and document
counts (u64 each), followed by one int32 length per sequence.
"""

from __future__ import annotations

import struct

import numpy as np

from megatron_cpt.errors import ConfigError

_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<QBQQ")  # version, dtype code, sequence count, document count


def sequence_lengths(prefix: str, where: str) -> np.ndarray:
    """The token count of each sequence of PREFIX.idx (int64); ConfigError naming ``where`` if the
    file is not such an index or is cut short."""
    path = f"{prefix}.idx"
    with open(path, "rb") as stream:
        magic, header = stream.read(len(_MAGIC)), stream.read(_HEADER.size)
        if magic != _MAGIC or len(header) != _HEADER.size:
            raise ConfigError(f"{where}: '{path}' is not a megatron-core index (no MMIDIDX header)")
        version, dtype_code, count, _ = _HEADER.unpack(header)
        if version != 1 or not 1 <= dtype_code <= 8:
            raise ConfigError(f"{where}: '{path}' is not a megatron-core index (version {version}, "
                              f"dtype code {dtype_code})")
        lengths = np.fromfile(stream, dtype="<i4", count=count)
    if len(lengths) != count:
        raise ConfigError(f"{where}: '{path}' is truncated ({len(lengths)} of {count} sequence "
                          f"lengths)")
    return lengths.astype(np.int64)
