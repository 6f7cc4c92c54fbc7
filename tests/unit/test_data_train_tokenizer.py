"""data train-tokenizer: a deterministic sentencepiece BPE that the sp: backend loads, and the same
tokenizer for transformers (tokenizer.json + tokenizer_config.json) with the same ids."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from data_fixtures import SAMPLE_DOCS, build_hf_tokenizer, many_docs, write_jsonl

from megatron_cpt.cli import main
from megatron_cpt.data.hf_tokenizer import PROBE_TEXTS, check_same_ids
from megatron_cpt.data.tokenizers import EOD_TEXT, load_tokenizer
from megatron_cpt.errors import UserError

# Not in the training corpus: Chinese with rare characters, English prose, code, odd whitespace.
UNSEEN = ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。鼂鼍龘",
          "Language models forget what they are not reminded of.",
          "for i in range(10):\n    print(i, end='\\t')  # 0\t1\t2", "\n\n  \t x  y  \n"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_jsonl(root / "mixed.jsonl", many_docs(400))
    (root / "extra.txt").write_text("\n\n".join(SAMPLE_DOCS), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert main(["data", "train-tokenizer", "--input", str(corpus), "--vocab-size", "600",
                 "--output", str(out)]) == 0
    return out


def test_sp_backend_loads_the_trained_model(trained):
    import sentencepiece

    tok = load_tokenizer(f"sp:{trained / 'tokenizer.model'}")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    assert tok.vocab_size == 600
    assert tok.eod_id == processor.piece_to_id(EOD_TEXT) == 2 and tok.bos_id == 1
    for text in SAMPLE_DOCS:
        ids = tok.encode(text)
        assert processor.decode(ids) == text  # identity normalization, whitespace kept
        assert tok.eod_id not in ids
    assert tok.encode_batch(SAMPLE_DOCS) == [tok.encode(t) for t in SAMPLE_DOCS]
    info = json.loads((trained / "tokenizer_info.json").read_text())
    # 400 JSONL docs + 10 paragraphs (two sample docs hold blank lines, so they split in .txt)
    assert info["eod_id"] == 2 and info["vocab_size"] == 600 and info["training_docs"] == 410
    # the probes + the first 32 documents of mixed.jsonl + the 10 paragraphs of extra.txt
    assert info["hf_ids_checked_texts"] == len(PROBE_TEXTS) + 32 + 10
    # a directory spec finds tokenizer.model inside it
    assert load_tokenizer(f"sp:{trained}").eod_id == 2


def test_byte_fallback_encodes_unseen_characters(trained):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    text = "龘 ✓ ünïcödé"
    ids = processor.encode(text)
    assert processor.unk_id() not in ids
    assert processor.decode(ids) == text


def test_training_is_deterministic(corpus, trained, tmp_path):
    assert main(["data", "train-tokenizer", "--input", str(corpus), "--vocab-size", "600",
                 "--output", str(tmp_path)]) == 0
    assert (tmp_path / "tokenizer.model").read_bytes() == (trained / "tokenizer.model").read_bytes()


def test_prepare_with_the_trained_tokenizer_counts_exactly(corpus, trained, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    spec = f"sp:{trained / 'tokenizer.model'}"
    assert main(["data", "prepare", "--input", str(corpus / "mixed.jsonl"), "--output-prefix",
                 str(tmp_path / "x"), "--tokenizer", spec, "--workers", "2", "--no-progress"]) == 0
    tok = load_tokenizer(spec)
    dataset = IndexedDataset(str(tmp_path / "x"))
    docs = many_docs(400)
    assert len(dataset) == len(docs)
    for i, text in enumerate(docs):
        assert dataset[i].tolist() == tok.encode(text) + [2]


def test_existing_model_and_impossible_vocab_are_user_errors(corpus, trained, tmp_path, capsys):
    assert main(["data", "train-tokenizer", "--input", str(corpus), "--vocab-size", "600",
                 "--output", str(trained)]) == 2
    assert "tokenizer.model already exists" in capsys.readouterr().err
    tiny = write_jsonl(tmp_path / "tiny.jsonl", ["ab ab ab"])
    assert main(["data", "train-tokenizer", "--input", str(tiny), "--vocab-size", "5000",
                 "--output", str(tmp_path / "t")]) == 2
    assert "sentencepiece training failed: " in capsys.readouterr().err
    assert main(["data", "train-tokenizer", "--input", str(tiny), "--vocab-size", "100",
                 "--output", str(tmp_path / "t")]) == 2
    assert "--vocab-size: 100 is too small" in capsys.readouterr().err


def test_bad_training_input_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b c"}\n{oops\n')
    assert main(["data", "train-tokenizer", "--input", str(bad), "--vocab-size", "400",
                 "--output", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"megatron-cpt data: error: {bad}:2: invalid JSON: Expecting property name enclosed " \
        "in double quotes (column 2)"
    assert not (tmp_path / "t" / "tokenizer.model").exists()


def test_transformers_loads_the_same_tokenizer(trained):
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(trained)
    assert (hf.bos_token, hf.bos_token_id, hf.eos_token, hf.eos_token_id, hf.unk_token_id) == (
        "<|begin_of_text|>", 1, EOD_TEXT, 2, 0)
    assert len(hf) == processor.GetPieceSize() == 600
    hf_backend = load_tokenizer(f"hf:{trained}")  # `data prepare --tokenizer hf:DIR` reads it too
    assert hf_backend.eod_id == 2 and hf_backend.vocab_size == 600
    for text in SAMPLE_DOCS + UNSEEN:
        ids = processor.Encode(text)
        assert hf.encode(text, add_special_tokens=False, split_special_tokens=True) == ids, text
        assert hf_backend.encode(text) == ids, text
        assert hf.decode(ids) == text
    # transformers reads a special-token string inside a text as that token (sentencepiece: text)
    assert hf.encode(f"a{EOD_TEXT}", add_special_tokens=False)[-1] == 2


def test_a_conversion_with_other_ids_is_refused(trained, tmp_path):
    other = build_hf_tokenizer(tmp_path / "other")  # a byte-level BPE: other ids for the same text
    with pytest.raises(UserError, match="encodes '床前明月光.*' differently from sentencepiece"):
        check_same_ids(trained / "tokenizer.model", other, list(PROBE_TEXTS), where=trained)


def test_a_conversion_that_decodes_otherwise_is_refused_with_its_own_message(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    spec = json.loads((broken / "tokenizer.json").read_text())
    spec["decoder"]["decoders"][0]["content"] = "_"  # "▁" decodes to "_" instead of " "
    (broken / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError) as info:
        check_same_ids(trained / "tokenizer.model", broken, ["forget what"], where=trained)
    assert str(info.value) == (
        f"{trained}: transformers' conversion of the tokenizer encodes 'forget what' to the same "
        f"ids as sentencepiece but decodes them to 'forget_what' (from character 6: ' what' vs "
        f"'_what'); no tokenizer.json written")
