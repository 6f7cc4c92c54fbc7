"""Train a sentencepiece BPE tokenizer on local corpora, for users without a model hub.

    megatron-cpt data train-tokenizer --input corpus/ --vocab-size 8000 --output tok
    megatron-cpt data prepare --input corpus/zh_poetry.jsonl --output-prefix data/zh --tokenizer sp:tok/tokenizer.model

Writes DIR/tokenizer.model (load it as ``sp:DIR/tokenizer.model``), DIR/tokenizer.vocab,
DIR/tokenizer_info.json, and the same tokenizer for transformers: DIR/tokenizer.json and
DIR/tokenizer_config.json (``AutoTokenizer.from_pretrained(DIR)``; see hf_tokenizer.py). Settings follow the Llama-2 sentencepiece tokenizer where they matter for
a pretraining corpus: byte fallback (no unknown tokens), identity normalization, whitespace kept
as written (code stays code), digits split. ``<|begin_of_text|>`` is id 1 and ``<|end_of_text|>``
(the end-of-document token) id 2; ids 3-5 are Llama-3's chat tokens (``<|start_header_id|>``,
``<|end_header_id|>``, ``<|eot_id|>``: control symbols, never produced from text), and the
transformers files carry Llama-3's chat template, so the same tokenizer serves a chat model after
fine-tuning (``data prepare-chat --tokenizer hf:DIR``). Training is single-threaded by default over every input line,
without sampling, so the same inputs give a byte-identical model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

from megatron_cpt.errors import UserError
from megatron_cpt.data.chat_format import LLAMA3_CHAT_TOKENS
from megatron_cpt.data.documents import decode_record, find_input_files, read_raw_chunks
from megatron_cpt.data.hf_tokenizer import write_hf_tokenizer
from megatron_cpt.data.tokenizers import EOD_TEXT, load_tokenizer
from megatron_cpt.files import write_atomic

MODEL_NAME = "tokenizer"
# sentencepiece skips longer training lines (bytes); long code lines and poems fit.
MAX_LINE_BYTES = 8192
# Documents per input file whose ids are compared between sentencepiece and the transformers file.
CHECK_DOCS_PER_FILE = 32


class TrainingLines:
    """Every non-blank line of every document (sentencepiece trains on lines), counted; keeps
    the first documents of each file as samples for checking the converted tokenizer."""

    def __init__(self, inputs: list[str], text_key: str = "text", txt_mode: str = "paragraph"):
        self.files = find_input_files(inputs)
        self.text_key = text_key
        self.txt_mode = txt_mode
        self.docs = 0
        self.lines = 0
        self.samples: list[str] = []
        # Bad input is kept here rather than raised through sentencepiece's C++ loop, which
        # would wrap it in a multi-line RuntimeError.
        self.error: UserError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            kept_from: dict[int, int] = {}
            for file_index, text in self._documents():
                self.docs += 1
                if kept_from.setdefault(file_index, 0) < CHECK_DOCS_PER_FILE:
                    kept_from[file_index] += 1
                    self.samples.append(text)
                for line in text.splitlines():
                    if line.strip():
                        self.lines += 1
                        yield line
        except UserError as exc:
            self.error = exc

    def _documents(self) -> Iterator[tuple[int, str]]:
        for chunk in read_raw_chunks(self.files, self.txt_mode):
            for number, raw in chunk.records:
                yield chunk.file_index, decode_record(self.files[chunk.file_index], number, raw,
                                                      self.text_key)


def _piece_id(proto, piece: str) -> int:
    return next(i for i, p in enumerate(proto.pieces) if p.piece == piece)


def train_sentencepiece(inputs: list[str], vocab_size: int, output_dir: str, *,
                        text_key: str = "text", txt_mode: str = "paragraph", threads: int = 1,
                        character_coverage: float = 0.9995, force: bool = False) -> dict:
    """Train DIR/tokenizer.model; returns the facts also written to DIR/tokenizer_info.json."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    out = Path(output_dir)
    model_path = out / f"{MODEL_NAME}.model"
    if model_path.exists() and not force:
        raise FileExistsError(f"{model_path} already exists (pass --force to overwrite)")
    if vocab_size < 300:
        raise UserError(f"--vocab-size: {vocab_size} is too small for byte fallback "
                        "(256 byte pieces + specials); use at least 300")
    lines = TrainingLines(inputs, text_key, txt_mode)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(1234)
    try:
        # An iterator and an in-memory writer keep file paths out of the model's trainer spec.
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=iter(lines), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, character_coverage=character_coverage,
            byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            max_sentence_length=MAX_LINE_BYTES, input_sentence_size=0,
            shuffle_input_sentence=False, num_threads=threads,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            bos_piece="<|begin_of_text|>", eos_piece=EOD_TEXT,
            control_symbols=list(LLAMA3_CHAT_TOKENS),
            minloglevel=2)
    except RuntimeError as exc:
        raise lines.error or UserError(f"sentencepiece training failed: {exc}") from exc
    if lines.error:
        raise lines.error
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    out.mkdir(parents=True, exist_ok=True)
    # The transformers files are converted and checked before the model is written.
    checked = write_hf_tokenizer(model.getvalue(), out, lines.samples)
    write_atomic(model_path, model.getvalue())
    write_atomic(out / f"{MODEL_NAME}.vocab",
                 "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces).encode("utf-8"))
    tokenizer = load_tokenizer(f"sp:{model_path}")
    info = {"tokenizer": f"sp:{model_path}", "type": "sentencepiece-bpe",
            "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id, "eod": EOD_TEXT,
            "byte_fallback": True, "character_coverage": character_coverage,
            "chat_tokens": {token: _piece_id(proto, token) for token in LLAMA3_CHAT_TOKENS},
            "training_docs": lines.docs, "training_lines": lines.lines, "threads": threads,
            "hf_tokenizer": str(out), "hf_ids_checked_texts": checked,
            "inputs": [str(p) for p in inputs]}
    write_atomic(out / "tokenizer_info.json", (json.dumps(info, indent=2) + "\n").encode())
    return info
