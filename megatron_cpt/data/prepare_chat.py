"""Chat JSONL -> token ids and a per-token loss mask, as megatron-core indexed datasets.

    megatron-cpt data prepare-chat --input chat.jsonl --output-prefix data/chat \\
        --tokenizer hf:Meta-Llama-3-8B-Instruct --seq-length 4096 --too-long truncate

Each conversation (``chat_records.py``: messages, prompt/response or instruction/input/output) is
rendered in the tokenizer's chat format (``chat_format.py``) into one sequence of
``PREFIX.bin/.idx`` (its ids) and one of ``PREFIX.mask.bin/.idx`` (1 where the loss is computed:
assistant content and its end of turn; ``--train-on all`` trains every token). A conversation
longer than ``--seq-length`` is truncated, dropped or an error, as ``--too-long`` says; each is
counted in ``PREFIX.stats.json`` and printed. Nothing is left at PREFIX unless the whole run
succeeds. Training packs the conversations into sequences of ``train.seq_length``
(``chat_dataset.py``); the stats report how well they pack at ``--seq-length``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from megatron_cpt.data.chat_format import ChatFormat, load_chat_format
from megatron_cpt.data.chat_records import LAYOUTS, parse_conversation
from megatron_cpt.data.documents import find_input_files, read_raw_chunks
from megatron_cpt.data.packing import pack_best_fit
from megatron_cpt.data.prepare import UINT16_VOCAB_LIMIT
from megatron_cpt.errors import UserError
from megatron_cpt.files import write_atomic

TOO_LONG = ("truncate", "drop", "error")
MASK_SUFFIX = ".mask"


def chat_paths(prefix: str) -> dict[str, Path]:
    return {"ids_bin": Path(prefix + ".bin"), "ids_idx": Path(prefix + ".idx"),
            "mask_bin": Path(prefix + MASK_SUFFIX + ".bin"),
            "mask_idx": Path(prefix + MASK_SUFFIX + ".idx"),
            "stats": Path(prefix + ".stats.json")}


@dataclass
class ChatFileStats:
    path: str
    conversations: int = 0
    tokens: int = 0
    trained_tokens: int = 0


@dataclass
class ChatPrepareStats:
    output_prefix: str
    tokenizer: str
    vocab_size: int
    eod_id: int
    dtype: str
    seq_length: int
    too_long: str
    train_on: str
    chat_format: dict
    kind: str = "chat"
    conversations: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_length: int = 0
    longer_than_seq_length: int = 0
    truncated: int = 0
    dropped: int = 0  # too long (--too-long drop), or nothing trained left after truncation
    layouts: dict = field(default_factory=lambda: {name: 0 for name in LAYOUTS})
    packing: dict = field(default_factory=dict)
    seconds: float = 0.0
    input_files: list[ChatFileStats] = field(default_factory=list)


class _Writers:
    """Two indexed-dataset builders on temporary paths, renamed into place by ``commit``."""

    def __init__(self, prefix: str, dtype):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.final = chat_paths(prefix)
        self.tmp = chat_paths(f"{prefix}.tmp{os.getpid()}")
        self.ids = IndexedDatasetBuilder(str(self.tmp["ids_bin"]), dtype=dtype)
        self.mask = IndexedDatasetBuilder(str(self.tmp["mask_bin"]), dtype=np.uint8)

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        self.ids.add_document(ids, [len(ids)])
        self.mask.add_document(mask, [len(mask)])

    def commit(self) -> None:
        self.ids.finalize(str(self.tmp["ids_idx"]))
        self.mask.finalize(str(self.tmp["mask_idx"]))
        for key in ("ids_bin", "ids_idx", "mask_bin", "mask_idx"):
            os.replace(self.tmp[key], self.final[key])

    def discard(self) -> None:
        for builder in (self.ids, self.mask):
            builder.data_file.close()
        for key in ("ids_bin", "ids_idx", "mask_bin", "mask_idx"):
            self.tmp[key].unlink(missing_ok=True)


def prepare_chat_dataset(inputs: list[str], output_prefix: str, tokenizer_spec: str, *,
                         seq_length: int, too_long: str = "truncate", train_on: str = "assistant",
                         force: bool = False, progress: bool = True) -> ChatPrepareStats:
    from tqdm import tqdm

    if seq_length < 2:
        raise UserError(f"--seq-length: must be >= 2, got {seq_length}")
    if too_long not in TOO_LONG:
        raise UserError(f"--too-long: expected one of {', '.join(TOO_LONG)}, got '{too_long}'")
    files = find_input_files(inputs)
    for source in files:
        if source.kind != "jsonl":
            raise UserError(f"{source.path}: chat data must be JSON lines (.jsonl or .json)")
    fmt = load_chat_format(tokenizer_spec)
    paths = chat_paths(output_prefix)
    for key in ("ids_bin", "ids_idx", "mask_bin", "mask_idx"):
        if paths[key].exists() and not force:
            raise FileExistsError(f"{paths[key]} already exists (pass --force to overwrite)")
    out_dir = paths["stats"].parent
    created_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if fmt.tokenizer.vocab_size < UINT16_VOCAB_LIMIT else np.int32
    stats = ChatPrepareStats(output_prefix, tokenizer_spec, fmt.tokenizer.vocab_size,
                             fmt.tokenizer.eod_id, np.dtype(dtype).name, seq_length, too_long,
                             train_on, fmt.describe(),
                             input_files=[ChatFileStats(str(f.path)) for f in files])
    start = time.perf_counter()
    with warnings.catch_warnings():  # megatron.core warns about missing TE/apex: not used here
        warnings.simplefilter("ignore")
        writers = _Writers(output_prefix, dtype)
    lengths: list[int] = []
    done = False
    try:
        with tqdm(desc="prepare-chat", unit=" conversations", disable=None if progress else True) as bar:
            for chunk in read_raw_chunks(files):
                source = files[chunk.file_index]
                for number, raw in chunk.records:
                    kept = _render(fmt, source, number, raw, stats, seq_length, too_long, train_on)
                    if kept is not None:
                        _record(writers, kept, stats, stats.input_files[chunk.file_index])
                        lengths.append(len(kept[0]))
                    bar.update(1)
        if not lengths:
            raise UserError(f"{', '.join(str(f.path) for f in files)}: no conversation left to "
                            f"write (dropped {stats.dropped})")
        writers.commit()
        done = True
    finally:
        if not done:
            writers.discard()
            if created_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()
    packing = pack_best_fit(np.array(lengths), seq_length)
    stats.packing = {"seq_length": seq_length, "packs": len(packing.packs),
                     "efficiency": round(packing.efficiency, 4)}
    stats.seconds = round(time.perf_counter() - start, 3)
    write_atomic(paths["stats"], json.dumps(asdict(stats), indent=2, ensure_ascii=False) + "\n")
    return stats


def _render(fmt: ChatFormat, source, number: int, raw: bytes, stats: ChatPrepareStats,
            seq_length: int, too_long: str, train_on: str):
    """(ids, mask) of one record after the --too-long policy, or None when it is dropped."""
    conversation = parse_conversation(source, number, raw)
    rendered = fmt.render(conversation.as_dicts(), train_on_all=train_on == "all")
    ids = np.array(rendered.ids, dtype=np.int64)
    mask = np.array(rendered.trained, dtype=np.uint8)
    stats.layouts[conversation.layout] += 1
    if ids.size and (ids.min() < 0 or ids.max() >= fmt.tokenizer.vocab_size):
        raise UserError(f"{source.path}:{number}: tokenizer '{fmt.tokenizer.name}' produced id "
                        f"{ids.max()} outside its vocabulary of {fmt.tokenizer.vocab_size}")
    if ids.size <= seq_length:
        return ids, mask
    stats.longer_than_seq_length += 1
    if too_long == "error":
        raise UserError(f"{source.path}:{number}: the conversation is {ids.size} tokens, longer "
                        f"than --seq-length {seq_length} (--too-long error; truncate or drop "
                        "such conversations instead)")
    if too_long == "drop" or not mask[:seq_length].any():
        stats.dropped += 1
        return None
    stats.truncated += 1
    return ids[:seq_length], mask[:seq_length]


def _record(writers: _Writers, kept, stats: ChatPrepareStats, file_stats: ChatFileStats) -> None:
    ids, mask = kept
    writers.add(ids.astype(writers.ids.dtype), mask)
    trained = int(mask.sum())
    for target in (stats, file_stats):
        target.conversations += 1
        target.tokens += len(ids)
        target.trained_tokens += trained
    stats.max_length = max(stats.max_length, len(ids))


def format_summary(stats: ChatPrepareStats) -> str:
    share = stats.trained_tokens / stats.tokens if stats.tokens else 0.0
    long = (f"{stats.longer_than_seq_length} longer than {stats.seq_length} tokens "
            f"({stats.truncated} truncated, {stats.dropped} dropped)")
    return (f"wrote {stats.output_prefix}.bin/.idx and {stats.output_prefix}{MASK_SUFFIX}.bin/.idx: "
            f"{stats.conversations} conversations, {stats.tokens} tokens, {stats.trained_tokens} "
            f"trained ({share:.1%}); {long}; packed into {stats.packing['packs']} sequences of "
            f"{stats.seq_length}: efficiency {stats.packing['efficiency']:.1%} "
            f"({stats.chat_format['kind']} format, end of turn {stats.chat_format['end_of_turn']} "
            f"= {stats.chat_format['end_of_turn_id']}); stats in {stats.output_prefix}.stats.json")
