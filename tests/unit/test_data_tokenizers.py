"""Tokenizer specs: hf:, tiktoken: (local rank file; named encodings offline), sp: errors."""

from __future__ import annotations

import json

import pytest
from data_fixtures import SAMPLE_DOCS, build_hf_tokenizer, build_two_byte_tiktoken

from megatron_cpt.errors import UserError
from megatron_cpt.data.tokenizers import load_tokenizer


def test_hf_directory_matches_the_tokenizers_library(tmp_path):
    from tokenizers import Tokenizer as HfTokenizer

    directory = build_hf_tokenizer(tmp_path / "tok")
    reference = HfTokenizer.from_file(str(directory / "tokenizer.json"))
    tok = load_tokenizer(f"hf:{directory}")
    assert tok.eod_id == reference.token_to_id("<|end_of_text|>")
    assert tok.bos_id == reference.token_to_id("<|begin_of_text|>")
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    for text in SAMPLE_DOCS[:5]:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert tok.encode_batch(SAMPLE_DOCS) == [tok.encode(t) for t in SAMPLE_DOCS]
    # the file itself is accepted too
    assert load_tokenizer(f"hf:{directory / 'tokenizer.json'}").eod_id == tok.eod_id


def test_hf_special_token_text_inside_a_document_is_not_eod(tmp_path):
    tok = load_tokenizer(f"hf:{build_hf_tokenizer(tmp_path / 'tok')}")
    assert tok.eod_id not in tok.encode("before <|end_of_text|> after")


def test_hf_eod_falls_back_to_the_configs_eos_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(SAMPLE_DOCS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert load_tokenizer(f"hf:{tmp_path}").eod_id == tok.token_to_id("</s>")


def test_hf_missing_directory_names_the_tokenizer(tmp_path):
    with pytest.raises(UserError, match=f"tokenizer 'hf:{tmp_path}/nope'.*tokenizer.json"):
        load_tokenizer(f"hf:{tmp_path}/nope")


def test_tiktoken_rank_file_uses_llama3_special_layout(tmp_path):
    path = build_two_byte_tiktoken(tmp_path / "two.tiktoken")
    tok = load_tokenizer(f"tiktoken:{path}")
    assert tok.vocab_size == 65792 + 256
    assert tok.eod_id == 65792 + 1 and tok.bos_id == 65792
    ids = tok.encode("中文 and English")
    assert all(i < 65792 for i in ids) and len(ids) <= len("中文 and English".encode())
    assert tok.eod_id not in tok.encode("<|end_of_text|>")


def test_tiktoken_named_encoding_offline_gives_a_clear_error(tmp_path, monkeypatch):
    import tiktoken.load

    def no_network(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    with pytest.raises(UserError, match=r"tiktoken:cl100k_base.*local cache.*tiktoken:PATH"):
        load_tokenizer("tiktoken:cl100k_base")
    with pytest.raises(UserError, match="tiktoken:no_such_encoding"):
        load_tokenizer("tiktoken:no_such_encoding")


def test_tiktoken_bad_rank_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("QQ== 0\nnot-a-rank-line\n")
    with pytest.raises(UserError, match=f"{path}:2"):
        load_tokenizer(f"tiktoken:{path}")


@pytest.mark.parametrize("spec, message", [
    ("gpt9:whatever", "unknown backend 'gpt9'"),
    ("no-colon", "expected one of"),
    ("sp:/does/not/exist.model", "not found"),
])
def test_bad_specs_name_the_tokenizer(spec, message):
    with pytest.raises(UserError, match=f"tokenizer '{spec}'.*{message}"):
        load_tokenizer(spec)
