"""data prepare: exact token counts read back through megatron-core, worker-count invariance,
text-file conventions, dtype choice, output handling."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (SAMPLE_DOCS, build_hf_tokenizer, build_two_byte_tiktoken, many_docs,
                           write_jsonl)

from megatron_cpt.cli import main
from megatron_cpt.data.prepare import prepare_indexed_dataset
from megatron_cpt.data.tokenizers import load_tokenizer


def read_indexed(prefix: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(prefix))


@pytest.fixture(scope="module")
def hf_spec(tmp_path_factory) -> str:
    return f"hf:{build_hf_tokenizer(tmp_path_factory.mktemp('tok') / 'tok')}"


def test_idx_holds_exactly_the_tokenizers_ids_per_document(tmp_path, hf_spec):
    docs = many_docs(300)
    jsonl = write_jsonl(tmp_path / "a.jsonl", docs)
    txt = tmp_path / "b.txt"
    txt.write_text("first paragraph\nstill first\n\n\nsecond 第二段\n", encoding="utf-8")
    prefix = tmp_path / "out" / "mix"
    assert main(["data", "prepare", "--input", str(jsonl), str(txt), "--output-prefix", str(prefix),
                 "--tokenizer", hf_spec, "--no-progress"]) == 0

    tok = load_tokenizer(hf_spec)
    texts = docs + ["first paragraph\nstill first", "second 第二段"]
    expected = [tok.encode(t) + [tok.eod_id] for t in texts]
    dataset = read_indexed(prefix)
    assert len(dataset) == len(texts)
    assert dataset.index.dtype == np.uint16
    assert list(dataset.sequence_lengths) == [len(e) for e in expected]
    for i, ids in enumerate(expected):
        assert dataset[i].tolist() == ids
    stats = json.loads(Path(f"{prefix}.stats.json").read_text())
    assert stats["docs"] == len(texts)
    assert stats["tokens"] == sum(len(e) for e in expected)
    assert stats["bytes"] == sum(len(t.encode()) for t in texts)
    assert stats["eod_id"] == tok.eod_id and stats["vocab_size"] == tok.vocab_size
    assert stats["tokenizer"] == hf_spec and stats["tokens_per_second"] > 0
    assert [f["docs"] for f in stats["input_files"]] == [300, 2]


def test_output_is_identical_for_any_worker_count(tmp_path, hf_spec):
    jsonl = write_jsonl(tmp_path / "a.jsonl", many_docs(2000))
    outputs = []
    for workers in (1, 2, 3):
        prefix = tmp_path / f"w{workers}" / "data"
        prepare_indexed_dataset([str(jsonl)], str(prefix), hf_spec, workers=workers,
                                progress=False, chunk_bytes=4096)  # ~30 chunks, several in flight
        outputs.append((Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


def test_no_eod_and_empty_texts(tmp_path, hf_spec):
    jsonl = write_jsonl(tmp_path / "a.jsonl", ["one", "", "two"])
    stats = prepare_indexed_dataset([str(jsonl)], str(tmp_path / "x"), hf_spec, append_eod=False,
                                    progress=False)
    tok = load_tokenizer(hf_spec)
    assert stats.docs == 2 and stats.skipped_empty == 1
    assert stats.tokens == len(tok.encode("one")) + len(tok.encode("two"))
    dataset = read_indexed(tmp_path / "x")  # keep it alive: items are views of its memory map
    assert dataset[1].tolist() == tok.encode("two")


@pytest.mark.parametrize("mode, docs", [
    ("paragraph", ["a b\nc", "d\n e", "f"]),
    ("line", ["a b", "c", "d", " e", "f"]),
    ("file", ["a b\nc\n\nd\n e\n\n\nf\n"]),
])
def test_txt_document_conventions(tmp_path, hf_spec, mode, docs):
    txt = tmp_path / "t.txt"
    txt.write_text("a b\nc\n\nd\n e\n\n\nf\n")
    prepare_indexed_dataset([str(txt)], str(tmp_path / "x"), hf_spec, txt_mode=mode, progress=False)
    tok = load_tokenizer(hf_spec)
    dataset = read_indexed(tmp_path / "x")
    assert [d.tolist() for d in dataset] == [tok.encode(d) + [tok.eod_id] for d in docs]


def test_gzip_directory_and_custom_text_key(tmp_path, hf_spec):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "b.jsonl", SAMPLE_DOCS[:2], key="content")
    with gzip.open(corpus / "a.jsonl.gz", "wt", encoding="utf-8") as out:
        out.write(json.dumps({"content": SAMPLE_DOCS[3]}) + "\n")
    (corpus / "manifest.json").write_text("{not json lines}")  # a directory's .json is skipped
    stats = prepare_indexed_dataset([str(corpus)], str(tmp_path / "x"), hf_spec,
                                    text_key="content", progress=False)
    assert [Path(f.path).name for f in stats.input_files] == ["a.jsonl.gz", "b.jsonl"]
    tok = load_tokenizer(hf_spec)
    dataset = read_indexed(tmp_path / "x")
    assert dataset[0].tolist() == tok.encode(SAMPLE_DOCS[3]) + [tok.eod_id]


def test_large_vocab_uses_int32(tmp_path):
    spec = f"tiktoken:{build_two_byte_tiktoken(tmp_path / 'two.tiktoken')}"
    jsonl = write_jsonl(tmp_path / "a.jsonl", SAMPLE_DOCS)
    stats = prepare_indexed_dataset([str(jsonl)], str(tmp_path / "x"), spec, progress=False)
    dataset = read_indexed(tmp_path / "x")
    assert stats.dtype == "int32" and dataset.index.dtype == np.int32
    tok = load_tokenizer(spec)
    assert dataset[5].tolist() == tok.encode(SAMPLE_DOCS[5]) + [tok.eod_id]
    assert max(max(d.tolist()) for d in dataset) == tok.eod_id > 65535


def test_existing_output_needs_force(tmp_path, hf_spec, capsys):
    jsonl = write_jsonl(tmp_path / "a.jsonl", SAMPLE_DOCS)
    args = ["data", "prepare", "--input", str(jsonl), "--output-prefix", str(tmp_path / "x"),
            "--tokenizer", hf_spec, "--no-progress"]
    assert main(args) == 0
    before = (tmp_path / "x.bin").read_bytes()
    assert main(args) == 2
    assert "x.bin already exists (pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert (tmp_path / "x.bin").read_bytes() == before


def test_prepend_bos(tmp_path, hf_spec, capsys):
    jsonl = write_jsonl(tmp_path / "a.jsonl", SAMPLE_DOCS[:3])
    stats = prepare_indexed_dataset([str(jsonl)], str(tmp_path / "x"), hf_spec, prepend_bos=True,
                                    progress=False)
    tok = load_tokenizer(hf_spec)
    assert tok.bos_id is not None and stats.bos_id == tok.bos_id
    dataset = read_indexed(tmp_path / "x")
    assert [d.tolist() for d in dataset] == \
        [[tok.bos_id] + tok.encode(t) + [tok.eod_id] for t in SAMPLE_DOCS[:3]]
    assert stats.tokens == sum(len(tok.encode(t)) + 2 for t in SAMPLE_DOCS[:3])
