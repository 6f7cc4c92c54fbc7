"""Small inputs and tokenizers for the data tests, all built in the test's temp dir."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

SAMPLE_DOCS = [
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "Continual pre-training adds a language to a pretrained model.",
    "混合比例与学习率需要一起选择。 <|end_of_text|> stays text here.",
    "Tabs\tand   spaces\n\n  and blank lines survive.",
    "ALMR = 0.33 at lr 1e-4; 中英混排 works too.",
]


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({key: text, "id": i}, ensure_ascii=False) + "\n")
    return path


def many_docs(count: int) -> list[str]:
    """``count`` documents cycling through SAMPLE_DOCS with a distinct number each."""
    return [f"{text} #{i}" for i, text in zip(range(count), itertools.cycle(SAMPLE_DOCS))]


def build_hf_tokenizer(directory: Path, texts: list[str] = SAMPLE_DOCS,
                       vocab_size: int = 400) -> Path:
    """A tiny byte-level BPE saved as a Hugging Face directory (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))
    return directory


def build_two_byte_tiktoken(path: Path) -> Path:
    """A tiktoken rank file of every 1- and 2-byte string: 65792 ranks, so with Llama-3's 256
    special tokens the vocabulary (66048) needs int32 ids."""
    singles = [bytes([b]) for b in range(256)]
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    with path.open("wb") as out:
        for rank, token in enumerate(singles + pairs):
            out.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return path
