"""Chat data for tests: Llama-3's tokenizer from the llama-models wheel (the whole rank file, or
its first ranks for speed) and chat JSONL written from message lists."""

from __future__ import annotations

import json
from pathlib import Path

from llama_models.llama3 import tokenizer as llama3_tokenizer

LLAMA3_MODEL = Path(llama3_tokenizer.__file__).with_name("tokenizer.model")
MULTI_TURN = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is ls?"},
    {"role": "assistant", "content": "ls - list directory contents"},
    {"role": "user", "content": "命令 cp 是什么？"},
    {"role": "assistant", "content": "cp - 复制文件和目录"},
]


def write_small_llama3(path: Path, ranks: int = 4000) -> str:
    """Llama-3's layout over the first ``ranks`` ranks of its file (any prefix of a BPE rank
    table is one): quick to load, the same pieces for short English texts. Returns the spec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with LLAMA3_MODEL.open() as source:
        path.write_text("".join(line for line, _ in zip(source, range(ranks))))
    return f"tiktoken:{path}"


def write_chat_jsonl(path: Path, records: list) -> Path:
    """One line per record: a dict, or a string written as it is (bad JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path
