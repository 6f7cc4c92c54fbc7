"""Corpora -> megatron-core indexed dataset (PREFIX.bin / PREFIX.idx) plus PREFIX.stats.json.

    megatron-cpt data prepare --input corpus/zh_poetry.jsonl --output-prefix data/zh_poetry \\
        --tokenizer sp:tok/tokenizer.model --workers 2

One document per input record (see ``documents``), its token ids followed by the tokenizer's
end-of-document id (``--prepend-bos`` also starts it with the beginning-of-text id, as Llama-3's
own pretraining documents do). Records are encoded by a pool of worker processes, chunk by chunk, and written in
input order, so the output is byte-identical for any number of workers. Nothing is left at PREFIX
unless the whole run succeeds: the builder writes to temporary files renamed at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import time
import warnings
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from megatron_cpt.errors import UserError
from megatron_cpt.data.documents import (InputFile, RawChunk, decode_record, find_input_files,
                                         read_raw_chunks)
from megatron_cpt.data.tokenizers import Tokenizer, load_tokenizer
from megatron_cpt.files import write_atomic

# Megatron's rule (DType.optimal_dtype): 2-byte ids while the vocabulary fits comfortably.
UINT16_VOCAB_LIMIT = 65500


@dataclass
class FileStats:
    path: str
    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped_empty: int = 0


@dataclass
class PrepareStats:
    output_prefix: str
    tokenizer: str
    vocab_size: int
    eod_id: int
    append_eod: bool
    bos_id: int | None
    dtype: str
    workers: int
    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped_empty: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    # CPU time of the main process and its workers over the same span: a figure that, unlike
    # tokens_per_second, holds up on a machine shared with other jobs.
    cpu_seconds: float = 0.0
    tokens_per_cpu_second: float = 0.0
    input_files: list[FileStats] = field(default_factory=list)


@dataclass
class EncodedChunk:
    file_index: int
    tokens: np.ndarray  # every document's ids (eod included), concatenated
    lengths: np.ndarray  # tokens per document
    text_bytes: int
    skipped_empty: int
    bytes_read: int


_worker_state: dict = {}


def _init_worker(spec: str, files: list[InputFile], text_key: str, append_eod: bool,
                 prepend_bos: bool, dtype_name: str) -> None:
    _worker_state.update(tokenizer=load_tokenizer(spec), files=files, text_key=text_key,
                         append_eod=append_eod, prepend_bos=prepend_bos,
                         dtype=np.dtype(dtype_name))


def _init_pool_worker(*init_args) -> None:
    # Fork, not spawn: spawn re-imports the caller's __main__, which breaks unguarded scripts.
    # A forked worker must not use the Rust tokenizer's thread pool; one core per worker.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _init_worker(*init_args)


def _encode_chunk(chunk: RawChunk) -> EncodedChunk | str:
    """Runs in a worker; bad input comes back as the error message (file:line: ...)."""
    tokenizer: Tokenizer = _worker_state["tokenizer"]
    source = _worker_state["files"][chunk.file_index]
    try:
        texts = [decode_record(source, number, raw, _worker_state["text_key"])
                 for number, raw in chunk.records]
    except UserError as exc:
        return str(exc)
    kept = [t for t in texts if t]
    ids = tokenizer.encode_batch(kept)
    eod = [tokenizer.eod_id] if _worker_state["append_eod"] else []
    bos = [tokenizer.bos_id] if _worker_state["prepend_bos"] else []
    lengths = np.array([len(bos) + len(d) + len(eod) for d in ids], dtype=np.int64)
    joined: list[int] = []
    for doc in ids:
        joined += bos
        joined += doc
        joined += eod
    flat = np.array(joined, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= tokenizer.vocab_size):
        return f"tokenizer '{tokenizer.name}' produced id {flat.max()} outside its vocabulary"
    return EncodedChunk(chunk.file_index, flat.astype(_worker_state["dtype"]), lengths,
                        sum(len(t.encode("utf-8")) for t in kept), len(texts) - len(kept),
                        chunk.bytes_read)


def _encoded_chunks(chunks: Iterator[RawChunk], workers: int, init_args: tuple
                    ) -> Iterator[EncodedChunk | str]:
    """Encode in input order; at most a few chunks per worker in flight, to bound memory."""
    if workers <= 1:
        _init_worker(*init_args)
        try:
            yield from map(_encode_chunk, chunks)
        finally:
            _worker_state.clear()
        return
    pool = multiprocessing.get_context("fork").Pool(workers, _init_pool_worker, init_args)
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


def output_paths(prefix: str) -> tuple[Path, Path, Path]:
    return Path(prefix + ".bin"), Path(prefix + ".idx"), Path(prefix + ".stats.json")


def prepare_indexed_dataset(inputs: list[str], output_prefix: str, tokenizer_spec: str, *,
                            workers: int = 1, text_key: str = "text", append_eod: bool = True,
                            prepend_bos: bool = False,
                            txt_mode: str = "paragraph", force: bool = False,
                            progress: bool = True, chunk_bytes: int = 1 << 19) -> PrepareStats:
    """Tokenize ``inputs`` into ``output_prefix``.bin/.idx and write ``output_prefix``.stats.json.

    ``chunk_bytes`` is the unit of work handed to a worker; it changes speed, never the output.
    """
    from tqdm import tqdm

    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    files = find_input_files(inputs)
    tokenizer = load_tokenizer(tokenizer_spec)
    if prepend_bos and tokenizer.bos_id is None:
        raise UserError(f"--prepend-bos: tokenizer '{tokenizer_spec}' has no "
                        "beginning-of-text token")
    bin_path, idx_path, stats_path = output_paths(output_prefix)
    for path in (bin_path, idx_path):
        if path.exists() and not force:
            raise FileExistsError(f"{path} already exists (pass --force to overwrite)")
    bin_path.parent.mkdir(parents=True, exist_ok=True)

    with warnings.catch_warnings():  # megatron.core warns about missing TE/apex: not used here
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = np.uint16 if tokenizer.vocab_size < UINT16_VOCAB_LIMIT else np.int32
    stats = PrepareStats(output_prefix, tokenizer_spec, tokenizer.vocab_size, tokenizer.eod_id,
                         append_eod, tokenizer.bos_id if prepend_bos else None,
                         np.dtype(dtype).name, workers,
                         input_files=[FileStats(str(f.path)) for f in files])
    tmp_prefix = f"{output_prefix}.tmp{os.getpid()}"
    tmp_bin, tmp_idx, _ = output_paths(tmp_prefix)
    init_args = (tokenizer_spec, files, text_key, append_eod, prepend_bos, np.dtype(dtype).name)
    total = None if any(f.compressed for f in files) else sum(f.path.stat().st_size for f in files)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    finished = False
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="prepare",
                  disable=None if progress else True) as bar:
            chunks = read_raw_chunks(files, txt_mode, chunk_bytes)
            # closing(): on an error the pool stops now, not when the traceback is freed.
            with closing(_encoded_chunks(chunks, workers, init_args)) as results:
                for result in results:
                    if isinstance(result, str):
                        raise UserError(result)
                    _add_chunk(builder, result, stats)
                    bar.update(result.bytes_read)
                    bar.set_postfix(docs=stats.docs, tokens=stats.tokens, refresh=False)
            if total is not None:  # chunks count record bytes; blank lines were read too
                bar.update(total - bar.n)
        for file_stats in stats.input_files:
            if file_stats.docs == 0:
                raise UserError(f"{file_stats.path}: no non-empty documents")
        builder.finalize(str(tmp_idx))
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
        finished = True
    finally:
        builder.data_file.close()
        if not finished:
            for path in (tmp_bin, tmp_idx):
                path.unlink(missing_ok=True)
    stats.seconds = round(time.perf_counter() - start, 3)
    stats.tokens_per_second = round(stats.tokens / max(stats.seconds, 1e-9), 1)
    stats.cpu_seconds = round(_cpu_seconds() - cpu_start, 3)
    stats.tokens_per_cpu_second = round(stats.tokens / max(stats.cpu_seconds, 1e-9), 1)
    _write_json(stats_path, asdict(stats))
    return stats


def _cpu_seconds() -> float:
    """User + system time of this process and of its waited-for children (the pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _add_chunk(builder, chunk: EncodedChunk, stats: PrepareStats) -> None:
    offset = 0
    for length in chunk.lengths.tolist():
        builder.add_document(chunk.tokens[offset:offset + length], [length])
        offset += length
    file_stats = stats.input_files[chunk.file_index]
    for target in (stats, file_stats):
        target.docs += len(chunk.lengths)
        target.tokens += offset
        target.bytes += chunk.text_bytes
        target.skipped_empty += chunk.skipped_empty


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
