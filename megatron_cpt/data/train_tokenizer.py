"""Train a sentencepiece BPE tokenizer on local corpora, for users without a model hub.

    megatron-cpt data train-tokenizer --input corpus/ --vocab-size 8000 --output tok
    megatron-cpt data prepare --input corpus/zh_poetry.jsonl --output-prefix data/zh --tokenizer sp:tok/tokenizer.model

Writes DIR/tokenizer.model (load it as ``sp:DIR/tokenizer.model``), DIR/tokenizer.vocab and
DIR/tokenizer_info.json. Settings follow the Llama-2 sentencepiece tokenizer where they matter for
a pretraining corpus: byte fallback (no unknown tokens), identity normalization, whitespace kept
as written (code stays code), digits split. ``<|begin_of_text|>`` is id 1 and ``<|end_of_text|>``
(the end-of-document token) id 2. Training is single-threaded by default over every input line,
without sampling, so the same inputs give a byte-identical model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from megatron_cpt.cli import UserError
from megatron_cpt.data.documents import decode_record, find_input_files, read_raw_chunks
from megatron_cpt.data.tokenizers import EOD_TEXT, load_tokenizer

MODEL_NAME = "tokenizer"
# sentencepiece skips longer training lines (bytes); long code lines and poems fit.
MAX_LINE_BYTES = 8192


def write_training_lines(inputs: list[str], out_path: Path, text_key: str = "text",
                         txt_mode: str = "paragraph") -> tuple[int, int]:
    """Every non-blank line of every document, one per line (sentencepiece trains on lines).

    Returns (documents, lines)."""
    files = find_input_files(inputs)
    docs = lines = 0
    with out_path.open("w", encoding="utf-8") as out:
        for chunk in read_raw_chunks(files, txt_mode):
            for number, raw in chunk.records:
                text = decode_record(files[chunk.file_index], number, raw, text_key)
                docs += 1
                for line in text.splitlines():
                    if line.strip():
                        out.write(line + "\n")
                        lines += 1
    return docs, lines


def train_sentencepiece(inputs: list[str], vocab_size: int, output_dir: str, *,
                        text_key: str = "text", txt_mode: str = "paragraph", threads: int = 1,
                        character_coverage: float = 0.9995, force: bool = False) -> dict:
    """Train DIR/tokenizer.model; returns the facts also written to DIR/tokenizer_info.json."""
    import sentencepiece

    out = Path(output_dir)
    model_path = out / f"{MODEL_NAME}.model"
    if model_path.exists() and not force:
        raise FileExistsError(f"{model_path} already exists (pass --force to overwrite)")
    if vocab_size < 300:
        raise UserError(f"--vocab-size: {vocab_size} is too small for byte fallback "
                        "(256 byte pieces + specials); use at least 300")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-tokenizer-") as tmp:
        lines_path = Path(tmp) / "lines.txt"
        docs, lines = write_training_lines(inputs, lines_path, text_key, txt_mode)
        sentencepiece.set_random_generator_seed(1234)
        try:
            sentencepiece.SentencePieceTrainer.Train(
                input=str(lines_path), model_prefix=str(Path(tmp) / MODEL_NAME),
                model_type="bpe", vocab_size=vocab_size, character_coverage=character_coverage,
                byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False,
                allow_whitespace_only_pieces=True, split_digits=True,
                max_sentence_length=MAX_LINE_BYTES, input_sentence_size=0,
                shuffle_input_sentence=False, num_threads=threads,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                bos_piece="<|begin_of_text|>", eos_piece=EOD_TEXT,
                minloglevel=2)
        except RuntimeError as exc:
            raise UserError(f"sentencepiece training failed: {exc}") from exc
        for suffix in (".model", ".vocab"):
            os.replace(Path(tmp) / f"{MODEL_NAME}{suffix}", out / f"{MODEL_NAME}{suffix}")
    tokenizer = load_tokenizer(f"sp:{model_path}")
    info = {"tokenizer": f"sp:{model_path}", "type": "sentencepiece-bpe",
            "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id, "eod": EOD_TEXT,
            "byte_fallback": True, "character_coverage": character_coverage,
            "training_docs": docs, "training_lines": lines, "threads": threads,
            "inputs": [str(p) for p in inputs]}
    (out / "tokenizer_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
