"""Hugging Face checkpoint files: lazy safetensors reading, streaming sharded writing, side files.

Reading opens a shard per request and takes only the asked rows/columns through
``safe_open(...).get_slice``, so nothing but that slice stays resident (the mapping is closed again).
Writing plans every shard's header up front from the known names and shapes, then streams each
tensor's bytes to disk as it arrives: memory stays at one tensor, whatever the shard size.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Optional

import torch

from megatron_cpt.errors import CheckpointError, UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")
_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
              "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
_TORCH_TO_ST = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
Span = Optional[tuple[int, int]]


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (names, dtypes, shapes), without reading any tensor.

    Also checks that the file holds every byte its header describes: a truncated shard (a copy
    cut short) is refused here, before any rank starts, rather than by a rank mid-conversion.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated inside its header "
                                  f"({size:,} bytes)")
        try:
            header = json.loads(handle.read(length))
            header.pop("__metadata__", None)
            end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise CheckpointError(f"{path}: not a safetensors file (its header is not a tensor "
                                  f"table)") from None
    if 8 + length + end > size:
        raise CheckpointError(f"{path}: truncated ({size:,} bytes; its header describes "
                              f"{8 + length + end:,})")
    return header


class HfCheckpoint:
    """A Hugging Face model directory: ``config.json`` plus safetensors (one file or an index)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no such file (a Hugging Face model directory "
                                    f"has config.json and *.safetensors)")
        try:
            self.config: dict = json.loads(config_path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
        self.weight_map = self._read_weight_map()
        self._headers: dict[str, dict] = {}

    def _read_weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map")
            except (ValueError, AttributeError):
                weight_map = None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            return dict(weight_map)
        if (self.dir / SINGLE_FILE).is_file():
            return {name: SINGLE_FILE for name in read_safetensors_header(self.dir / SINGLE_FILE)}
        raise FileNotFoundError(f"{self.dir}: neither {INDEX_FILE} nor {SINGLE_FILE} "
                                f"(only safetensors checkpoints can be converted)")

    def check_files(self) -> None:
        """Every shard the index names exists and lists the tensors the index assigns to it."""
        for file_name in sorted(set(self.weight_map.values())):
            path = self.dir / file_name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: safetensors shard named in {INDEX_FILE} is missing")
        for name, file_name in self.weight_map.items():
            if name not in self._header(file_name):
                raise CheckpointError(f"{self.dir / file_name}: has no tensor '{name}' "
                                 f"although {INDEX_FILE} says so")

    def _header(self, file_name: str) -> dict:
        if file_name not in self._headers:
            self._headers[file_name] = read_safetensors_header(self.dir / file_name)
        return self._headers[file_name]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header(self.weight_map[name])[name]["shape"])

    def file_of(self, name: str) -> Path:
        return self.dir / self.weight_map[name]

    def torch_dtype(self, name: str) -> torch.dtype:
        code = self._header(self.weight_map[name])[name]["dtype"]
        return _ST_DTYPES[code]

    def read(self, name: str, rows: Span = None, cols: Span = None) -> torch.Tensor:
        """The tensor, or only rows [a, b) / columns [c, d) of it, read from disk."""
        from safetensors import safe_open

        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: no tensor '{name}' in the checkpoint")
        with safe_open(self.file_of(name), framework="pt") as handle:
            view = handle.get_slice(name)
            row_slice = slice(*rows) if rows is not None else slice(None)
            if len(view.get_shape()) == 1:
                tensor = view[row_slice]
            else:
                tensor = view[row_slice, slice(*cols) if cols is not None else slice(None)]
        return tensor.contiguous()


class ShardedSafetensorsWriter:
    """Writes a known list of tensors into ``model-0000i-of-0000n.safetensors`` files + index.

    ``write`` must be called in plan order; each shard's header is written when the shard starts.
    """

    def __init__(self, directory: Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int):
        self.dir = directory
        self.shards = self._split(plan, max_shard_bytes)
        count = len(self.shards)
        self.file_names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self.order = [(shard, entry) for shard, entries in enumerate(self.shards) for entry in entries]
        self.position = 0
        self._handle = None
        self._open_shard = -1

    @staticmethod
    def _split(plan, max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
        shards, current, size = [], [], 0
        for name, shape, dtype in plan:
            nbytes = _nbytes(shape, dtype)
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append((name, shape, dtype))
            size += nbytes
        if current:
            shards.append(current)
        return shards

    @property
    def total_bytes(self) -> int:
        return sum(_nbytes(shape, dtype) for _, (_, shape, dtype) in self.order)

    def _start_shard(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[shard]:
            nbytes = _nbytes(shape, dtype)
            header[name] = {"dtype": _TORCH_TO_ST[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data start to 8 bytes
        self._handle = open(self.dir / self.file_names[shard], "wb")
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)
        self._open_shard = shard

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, (expected, shape, dtype) = self.order[self.position]
        if name != expected or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"writing '{name}' {tuple(tensor.shape)} {tensor.dtype}; the plan expects "
                             f"'{expected}' {shape} {dtype} next")
        if shard != self._open_shard:
            self._start_shard(shard)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._handle.write(memoryview(data))
        self.position += 1

    def finish(self) -> None:
        if self.position != len(self.order):
            raise ValueError(f"only {self.position} of {len(self.order)} planned tensors were written")
        if self._handle is not None:
            self._handle.close()
        weight_map = {name: self.file_names[shard] for shard, (name, _, _) in self.order}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    """Copy whichever tokenizer files ``source`` has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied


def tokenizer_token_ids(directory: Path) -> tuple[int, dict[str, int]]:
    """(number of tokens, {"bos_token_id": .., "eos_token_id": ..}) of the Hugging Face tokenizer in
    ``directory`` (``tokenizer.json`` + the bos/eos tokens named in ``tokenizer_config.json``)."""
    from tokenizers import Tokenizer

    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"--tokenizer-from {directory}: no tokenizer.json there "
                                f"(`megatron-cpt data train-tokenizer` writes one)")
    try:
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        raise UserError(f"--tokenizer-from {directory}: tokenizer.json is not a tokenizers "
                        f"file ({exc})") from None
    config_path = directory / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"--tokenizer-from {directory}: tokenizer_config.json is not "
                            f"valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise UserError(f"--tokenizer-from {directory}: tokenizer_config.json must hold "
                            f"a JSON object")
    ids = {}
    for role in ("bos", "eos"):
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None and tokenizer.token_to_id(token) is not None:
            ids[f"{role}_token_id"] = tokenizer.token_to_id(token)
    return tokenizer.get_vocab_size(with_added_tokens=True), ids


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '100KB' / '1234' -> bytes (powers of 1000, as transformers does)."""
    units = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].strip():
            try:
                return int(float(upper[: -len(unit)]) * factor)
            except ValueError:
                break
    if upper.isdigit():
        return int(upper)
    raise ValueError(f"size '{text}': expected e.g. 5GB, 500MB or a byte count")
