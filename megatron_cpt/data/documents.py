"""Input files -> documents, with errors that name the file and line.

Formats, told apart by the file name (optionally ending in .gz):
- ``.jsonl`` / ``.json``: JSON lines, one document per non-blank line, its text in a field
  (``text`` unless told otherwise); other fields are ignored.
- ``.txt``: plain text split by ``txt_mode``: ``paragraph`` (default: documents are separated by
  one or more blank lines, newlines inside a document are kept), ``line`` (one document per
  non-blank line), or ``file`` (the whole file is one document).

Reading is split in two so that the costly half runs in worker processes: ``read_raw_chunks``
(main process) cuts files into raw byte records, ``decode_record`` (workers) checks and decodes one.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from megatron_cpt.errors import UserError

TXT_MODES = ("paragraph", "line", "file")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # "jsonl" or "txt"

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".gz"


@dataclass
class RawChunk:
    """Consecutive records of one file: (line number where the record starts, raw bytes)."""
    file_index: int
    records: list[tuple[int, bytes]]
    bytes_read: int


def input_kind(path: Path) -> str | None:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    return _SUFFIXES.get(suffixes[0]) if suffixes else None


def find_input_files(paths: list[str]) -> list[InputFile]:
    """Files in the order given; a directory stands for its .jsonl and .txt files (also .gz),
    recursively, sorted by path."""
    found: list[InputFile] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            # .json is left out here: a directory's .json is usually metadata (manifest.json).
            inside = sorted(p for p in path.rglob("*")
                            if p.is_file() and input_kind(p) and ".json" not in p.suffixes[-2:])
            if not inside:
                raise UserError(f"{path}: directory holds no .jsonl or .txt files")
            found += [InputFile(p, input_kind(p)) for p in inside]
        elif not path.exists():
            raise FileNotFoundError(f"{path}: input file not found")
        elif input_kind(path) is None:
            raise UserError(f"{path}: unknown input format (expected .jsonl, .json or .txt, "
                            "optionally .gz)")
        else:
            found.append(InputFile(path, input_kind(path)))
    return found


def _open(source: InputFile) -> BinaryIO:
    return gzip.open(source.path, "rb") if source.compressed else source.path.open("rb")


def _records(source: InputFile, txt_mode: str) -> Iterator[tuple[int, bytes]]:
    with _open(source) as handle:
        if source.kind == "txt" and txt_mode == "file":
            data = handle.read()
            if data.strip():
                yield 1, data
            return
        paragraph: list[bytes] = []
        start = 0
        number = 0
        for number, line in enumerate(handle, 1):
            blank = not line.strip()
            if source.kind == "jsonl" or txt_mode == "line":
                if not blank:
                    yield number, line.rstrip(b"\r\n")
            elif blank:
                if paragraph:
                    yield start, b"".join(paragraph).rstrip(b"\r\n")
                    paragraph = []
            else:
                start = start if paragraph else number
                paragraph.append(line)
        if paragraph:
            yield start, b"".join(paragraph).rstrip(b"\r\n")


def read_raw_chunks(files: list[InputFile], txt_mode: str = "paragraph",
                    chunk_bytes: int = 1 << 19) -> Iterator[RawChunk]:
    """Cut every file into chunks of about ``chunk_bytes``; a chunk never spans two files.

    Raises UserError for a file with no records at all (empty or only blank lines).
    """
    if txt_mode not in TXT_MODES:
        raise UserError(f"txt mode '{txt_mode}': expected one of {', '.join(TXT_MODES)}")
    for index, source in enumerate(files):
        records: list[tuple[int, bytes]] = []
        size = 0
        any_record = False
        for number, raw in _records(source, txt_mode):
            any_record = True
            records.append((number, raw))
            size += len(raw) + 1
            if size >= chunk_bytes:
                yield RawChunk(index, records, size)
                records, size = [], 0
        if not any_record:
            raise UserError(f"{source.path}: empty file (no documents)")
        if records:
            yield RawChunk(index, records, size)


def decode_utf8(source: InputFile, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = number + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{source.path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                        f"at column {column})") from None


def decode_json_object(source: InputFile, number: int, raw: bytes) -> dict:
    """One JSON-lines record as a dict; UserError naming file:line when it is not one."""
    where = f"{source.path}:{number}"
    try:
        record = json.loads(decode_utf8(source, number, raw))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def decode_record(source: InputFile, number: int, raw: bytes, text_key: str = "text") -> str:
    """The document text of one record; UserError naming file:line (and field) when it is bad."""
    where = f"{source.path}:{number}"
    if source.kind == "txt":
        return decode_utf8(source, number, raw)
    record = decode_json_object(source, number, raw)
    if text_key not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise UserError(f"{where}: missing field '{text_key}' (fields: {fields})")
    text = record[text_key]
    if not isinstance(text, str):
        raise UserError(f"{where}: field '{text_key}' is {type(text).__name__}, expected a string")
    return text
