"""Tokenizer backends behind one small interface, chosen by a spec string.

    hf:DIR              a Hugging Face tokenizer directory (its tokenizer.json), e.g. Llama-3's own
    tiktoken:NAME       a tiktoken encoding already in the local cache (e.g. tiktoken:cl100k_base)
    tiktoken:FILE       a local BPE rank file (.tiktoken, or Llama-3's original tokenizer.model)
    sp:FILE.model       a sentencepiece model (see ``megatron-cpt data train-tokenizer``)

Every backend encodes plain text only: special-token strings inside a document are encoded as
text, never turned into control tokens, and no BOS/EOS is added; ``prepare`` appends ``eod_id``
(and, when asked, puts ``bos_id`` first).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from megatron_cpt.errors import UserError

EOD_TEXT = "<|end_of_text|>"
SPEC_FORMS = "hf:DIR, tiktoken:NAME, tiktoken:FILE.tiktoken, sp:FILE.model"

# Llama-3's split pattern (the same as cl100k_base's); used for local tiktoken rank files.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
# The named ones among them, from id n (Llama-3.1's layout; the others are reserved tokens).
LLAMA3_NAMED_SPECIAL = ("<|begin_of_text|>", EOD_TEXT, "<|reserved_special_token_0|>",
                        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                        "<|python_tag|>", "<|image|>")


class Tokenizer:
    """Text -> token ids, plus what an indexed dataset needs: vocab size, end-of-document id and,
    where the tokenizer has one, the beginning-of-text id."""

    def __init__(self, name: str, vocab_size: int, eod_id: int,
                 encode_one: Callable[[str], list[int]],
                 encode_many: Callable[[list[str]], list[list[int]]] | None = None,
                 bos_id: int | None = None) -> None:
        self.name = name
        self.vocab_size = vocab_size
        self.eod_id = eod_id
        self.bos_id = bos_id
        self._encode_one = encode_one
        self._encode_many = encode_many

    def encode(self, text: str) -> list[int]:
        return self._encode_one(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._encode_many is not None:
            return self._encode_many(list(texts))
        return [self._encode_one(t) for t in texts]

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


def load_tokenizer(spec: str) -> Tokenizer:
    """Load the tokenizer named by ``spec``; bad specs raise UserError naming the tokenizer."""
    backend, sep, target = spec.partition(":")
    if not sep or not target:
        raise UserError(f"tokenizer '{spec}': expected one of {SPEC_FORMS}")
    loaders = {"hf": _load_hf, "tiktoken": _load_tiktoken, "sp": _load_sentencepiece}
    if backend not in loaders:
        raise UserError(f"tokenizer '{spec}': unknown backend '{backend}' "
                        f"(expected one of {SPEC_FORMS})")
    return loaders[backend](spec, target)


def _load_hf(spec: str, target: str) -> Tokenizer:
    from tokenizers import Tokenizer as HfTokenizer

    path = Path(target)
    directory = path.parent if path.is_file() else path
    tokenizer_json = path if path.is_file() else path / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UserError(f"tokenizer '{spec}': {tokenizer_json} not found "
                        "(hf: needs a local directory holding tokenizer.json)")
    try:
        tok = HfTokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # the Rust library raises a bare Exception
        raise UserError(f"tokenizer '{spec}': cannot read {tokenizer_json}: {exc}") from exc
    eod_text = _hf_eod_text(directory, tok)
    if eod_text is None:
        raise UserError(f"tokenizer '{spec}': no end-of-document token: neither {EOD_TEXT} nor an "
                        f"eos_token in {directory / 'tokenizer_config.json'}")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    tok.encode_special_tokens = True  # "<|end_of_text|>" typed in a document stays text

    def encode_many(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return Tokenizer(spec, vocab_size, tok.token_to_id(eod_text),
                     lambda text: tok.encode(text, add_special_tokens=False).ids, encode_many,
                     bos_id=_hf_bos_id(directory, tok))


def _hf_eod_text(directory: Path, tok) -> str | None:
    # Pretraining documents end with <|end_of_text|> even for chat models whose eos is <|eot_id|>.
    candidates = [EOD_TEXT]
    config = directory / "tokenizer_config.json"
    if config.is_file():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            candidates.append(eos)
    candidates += ["<|endoftext|>", "</s>", "<eos>"]
    return next((c for c in candidates if tok.token_to_id(c) is not None), None)


def _hf_bos_id(directory: Path, tok) -> int | None:
    candidates = ["<|begin_of_text|>"]
    config = directory / "tokenizer_config.json"
    if config.is_file():
        bos = json.loads(config.read_text(encoding="utf-8")).get("bos_token")
        candidates.append(bos.get("content") if isinstance(bos, dict) else bos)
    candidates.append("<s>")
    return next((tok.token_to_id(c) for c in candidates
                 if isinstance(c, str) and tok.token_to_id(c) is not None), None)


def _load_tiktoken(spec: str, target: str) -> Tokenizer:
    import tiktoken

    if is_rank_file(target):
        encoding = llama3_rank_file_encoding(spec, Path(target))
        eod_id = encoding.encode_single_token(EOD_TEXT)
        bos_id = encoding.encode_single_token("<|begin_of_text|>")
    else:
        try:
            encoding = tiktoken.get_encoding(target)
        except ValueError as exc:
            raise UserError(f"tokenizer '{spec}': {exc}") from exc
        except Exception as exc:
            cache = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                     or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
            raise UserError(
                f"tokenizer '{spec}': encoding '{target}' is not in the local cache ({cache}) and "
                f"cannot be downloaded ({type(exc).__name__}); pass a local rank file as "
                "tiktoken:PATH.tiktoken instead") from exc
        eod_id = encoding.eot_token
        bos_id = None  # OpenAI encodings have no beginning-of-text token
    return Tokenizer(spec, encoding.n_vocab, eod_id, encoding.encode_ordinary,
                     lambda texts: encoding.encode_ordinary_batch(texts, num_threads=1), bos_id)


def is_rank_file(target: str) -> bool:
    """Whether a ``tiktoken:`` target names a local rank file rather than a cached encoding."""
    return target.endswith((".tiktoken", ".model")) or os.sep in target


def llama3_rank_file_encoding(spec: str, path: Path):
    """A rank file read with Llama-3's layout: 256 special tokens after the n ranks,
    <|begin_of_text|> = n, <|end_of_text|> = n + 1, the chat headers n + 6 and n + 7, <|eot_id|> =
    n + 9, the rest reserved."""
    import tiktoken

    if not path.is_file():
        raise UserError(f"tokenizer '{spec}': rank file {path} not found")
    ranks: dict[bytes, int] = {}
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as exc:
                raise UserError(f"tokenizer '{spec}': {path}:{number}: not a tiktoken rank line "
                                "('BASE64 RANK')") from exc
    if not ranks:
        raise UserError(f"tokenizer '{spec}': rank file {path} is empty")
    n = len(ranks)
    # The reserved tokens after the named ones go on from <|reserved_special_token_2|>.
    names = list(LLAMA3_NAMED_SPECIAL) + [
        f"<|reserved_special_token_{i}|>"
        for i in range(2, 2 + LLAMA3_NUM_SPECIAL - len(LLAMA3_NAMED_SPECIAL))]
    special = {name: n + i for i, name in enumerate(names)}
    return tiktoken.Encoding(name=path.stem, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special)


def _load_sentencepiece(spec: str, target: str) -> Tokenizer:
    import sentencepiece

    path = Path(target)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"tokenizer '{spec}': sentencepiece model {path} not found")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise UserError(f"tokenizer '{spec}': cannot load {path}: {exc}") from exc
    eod_id = processor.PieceToId(EOD_TEXT)
    if eod_id == processor.unk_id():
        eod_id = processor.eos_id()
    if eod_id < 0:
        raise UserError(f"tokenizer '{spec}': model has neither a {EOD_TEXT} piece nor an eos id")

    def encode_many(texts: list[str]) -> list[list[int]]:
        return processor.Encode(texts, num_threads=1)

    bos_id = processor.bos_id() if processor.bos_id() >= 0 else None
    return Tokenizer(spec, processor.GetPieceSize(), eod_id,
                     lambda text: processor.Encode(text), encode_many, bos_id)
