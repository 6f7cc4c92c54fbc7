"""A Hugging Face tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) with the ids of a
sentencepiece model, so that ``AutoTokenizer.from_pretrained(DIR)`` encodes as ``sp:DIR`` does.

    megatron-cpt data train-tokenizer --input corpus --vocab-size 4000 --output tok
    python -c "from transformers import AutoTokenizer; print(AutoTokenizer.from_pretrained('tok').encode('你好'))"

The conversion is transformers' own: ``TokenizersBackend.from_pretrained`` on a directory holding
only ``tokenizer.model`` builds the tokenizers pipeline from the model's normalizer and trainer
specs (whitespace escaping, byte fallback, BPE merges ranked by piece score). Its ids are then
compared with sentencepiece's on sample texts, and decoded back; any difference is an error and
nothing is written. One difference is by design: transformers matches the special-token strings
(``<|end_of_text|>``...) inside a text as those tokens, the ``sp:`` backend encodes them as text;
``split_special_tokens=True`` gives transformers the ``sp:`` behaviour (and the check uses it).
The directory also gets Llama-3's chat template (``chat_template.jinja``) over the model's chat
tokens, for ``data prepare-chat`` and a chat model's export.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from megatron_cpt.data.chat_format import LLAMA3_CHAT_TEMPLATE
from megatron_cpt.errors import UserError

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Whitespace runs, tabs, newlines, digits, characters no corpus holds (byte fallback), mixed scripts.
PROBE_TEXTS = (
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n\treturn  x ** 2  # 12345\n\n",
    "  leading spaces, trailing spaces  ",
    "混合 mixed 文本 with numbers 2024-11-27 and ✓ 龘 ünïcödé 🙂",
)


def write_hf_tokenizer(model: bytes, out_dir: Path, check_texts: Iterable[str]) -> int:
    """Write ``out_dir``/tokenizer.json and tokenizer_config.json converted from the serialized
    sentencepiece ``model``; returns the number of texts whose ids were checked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".hf_tokenizer") as tmp:
        source, converted = Path(tmp) / "spm", Path(tmp) / "hf"
        source.mkdir()
        (source / "tokenizer.model").write_bytes(model)
        _convert(source, converted)
        checked = check_same_ids(source / "tokenizer.model", converted,
                                 [*PROBE_TEXTS, *check_texts], where=out_dir)
        for name in HF_TOKENIZER_FILES:
            os.replace(converted / name, out_dir / name)
    return checked


def _convert(source: Path, target: Path) -> None:
    from transformers import TokenizersBackend
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its notes about the missing tokenizer.json are expected here
    try:
        tokenizer = TokenizersBackend.from_pretrained(str(source))
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE  # its chat tokens are ids 3-5
        tokenizer.save_pretrained(str(target))
    finally:
        logging.set_verbosity(verbosity)


def _first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_same_ids(model_path: Path, hf_dir: Path, texts: list[str], where: Path) -> int:
    """Every text encodes to the same ids with sentencepiece and with ``AutoTokenizer`` from
    ``hf_dir``, and decodes back to itself; returns the number of texts."""
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    expected = processor.Encode(texts)
    got = hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for text, want, have in zip(texts, expected, got):
        if want != have:
            at = _first_difference(want, have)
            raise UserError(
                f"{where}: transformers' conversion of the tokenizer encodes {text[:40]!r} differently from "
                f"sentencepiece (from token {at}: {want[at:at + 5]} vs {have[at:at + 5]}); "
                f"no tokenizer.json written")
        decoded = hf.decode(have)
        if decoded != text:
            at = _first_difference(text, decoded)
            raise UserError(
                f"{where}: transformers' conversion of the tokenizer encodes {text[:40]!r} to the "
                f"same ids as sentencepiece but decodes them to {decoded[:40]!r} (from character "
                f"{at}: {text[at:at + 10]!r} vs {decoded[at:at + 10]!r}); no tokenizer.json written")
    return len(texts)
